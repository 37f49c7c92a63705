"""models/: parameter and MAC counts against the literature, forward shapes, both ONNX exporters."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.export import REGISTRY, build, export_onnx, randomize_batchnorm

# Trainable parameters (BN gamma/beta counted, running stats not) and conv+linear MACs per image.
EXPECTED = {
    "vgg16": (14.99e6, 0.01e6, 314e6),
    "resnet18": (11.17e6, 0.01e6, 557e6),
    "resnet20": (0.27e6, 0.01e6, 41e6),
    "resnet56": (0.86e6, 0.01e6, 126e6),
    "mobilenetv2": (2.24e6, 0.01e6, 89e6),
}


def count_macs(model: nn.Module) -> int:
    """Multiply-accumulates of Conv2d and Linear for one 3x32x32 image, as pruning papers count."""
    total = 0

    def on_conv(module, inputs, output):
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += output[0].numel() * kernel

    def on_linear(module, inputs, output):
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_parameter_and_mac_counts(name):
    model = build(name)
    params = sum(p.numel() for p in model.parameters())
    expected_params, tolerance, expected_macs = EXPECTED[name]
    assert abs(params - expected_params) <= tolerance, params
    macs = count_macs(model)
    assert abs(macs - expected_macs) <= 0.01 * expected_macs, macs


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_forward_shape(name):
    model = build(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def run_onnx(path, array):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    return session.run(None, {"input": array})[0]


def check_export(name, tmp_path, dynamo):
    torch.manual_seed(0)
    model = randomize_batchnorm(build(name), seed=1).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx", dynamo=dynamo)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert graph.input[0].name == "input"
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    array = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(array)).numpy()
    np.testing.assert_allclose(run_onnx(path, array), expected, atol=1e-4, rtol=1e-4)
    return graph


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_legacy_export_keeps_batchnorm_and_matches_torch(name, tmp_path):
    graph = check_export(name, tmp_path, dynamo=False)
    assert any(node.op_type == "BatchNormalization" for node in graph.node)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_dynamo_export_matches_torch(name, tmp_path):
    check_export(name, tmp_path, dynamo=True)


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        build("alexnet")


def test_gpu_augmentation_gives_padded_crops_and_flips():
    import torch.nn.functional as F

    from models.train_cifar import PADDING, augment

    images = torch.randint(0, 255, (32, 3, 32, 32), dtype=torch.uint8)
    padded = F.pad(images, (PADDING,) * 4)
    crops = augment(padded, torch.Generator().manual_seed(0))
    assert crops.shape == images.shape
    for index, crop in enumerate(crops):
        windows = [padded[index, :, t : t + 32, l : l + 32] for t in range(9) for l in range(9)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(-1)) for w in windows)


def test_train_script_runs_and_writes_its_outputs(tmp_path):
    import json
    import shutil
    from pathlib import Path

    from models.train_cifar import main

    demo = Path(__file__).resolve().parents[1] / "models" / "data" / "cifar10_demo"
    shutil.copy(demo / "train.jpeg.npz", tmp_path / "train.jpeg.npz")
    shutil.copy(demo / "test.jpeg.npz", tmp_path / "test.jpeg.npz")
    out = tmp_path / "out"
    options = "--model resnet20 --epochs 1 --limit 64 --batch-size 32 --onnx-check 4 --device cpu".split()
    main(["--data", str(tmp_path), "--out", str(out), *options])
    summary = json.loads((out / "resnet20.train.json").read_text())
    assert summary["epochs"] == 1 and summary["onnx_check"]["max_abs_difference_vs_torch"] < 1e-4
    assert json.loads((out / "resnet20.preprocess.json").read_text())["layout"] == "NCHW"
    assert {p.name for p in out.iterdir()} >= {"resnet20.onnx", "resnet20.pt"}
