"""models/ for 224x224 inputs: the ImageNet ResNet-18 and the small CNN of benchmarks/scale.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.export import IMAGENET_REGISTRY, REGISTRY, build, export_onnx, randomize_batchnorm

# Trainable parameters, conv+linear MACs per 224x224 image (torchvision's resnet18: 11,689,512 / 1.814G).
EXPECTED = {"resnet18_imagenet": (11_689_512, 1.814e9), "small224": (24_346, 8.58e6)}


def count_macs(model: nn.Module, side: int = 224) -> int:
    total = 0

    def on_conv(module, inputs, output):
        nonlocal total
        total += output[0].numel() * module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups

    def on_linear(module, inputs, output):
        nonlocal total
        total += module.in_features * module.out_features

    handles = [m.register_forward_hook(on_conv if isinstance(m, nn.Conv2d) else on_linear)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    for handle in handles:
        handle.remove()
    return total


def test_kept_apart_from_the_cifar_registry():
    assert not set(IMAGENET_REGISTRY) & set(REGISTRY)
    assert build("resnet18_imagenet").fc.out_features == 1000
    assert build("small224").fc.out_features == 10
    assert build("resnet18_imagenet", num_classes=7).fc.out_features == 7
    assert build("resnet20").fc.out_features == 10


@pytest.mark.parametrize("name", sorted(IMAGENET_REGISTRY))
def test_parameter_and_mac_counts(name):
    model = build(name)
    params, macs = EXPECTED[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert abs(count_macs(model) - macs) <= 0.01 * macs


@pytest.mark.parametrize("name", sorted(IMAGENET_REGISTRY))
def test_export_at_224_matches_torch(name, tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(build(name), seed=1).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_shape=(3, 224, 224))
    graph = onnx.load(str(path)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert any(node.op_type == "BatchNormalization" for node in graph.node)
    array = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(array)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": array})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_export_by_name_uses_the_models_own_input_size(tmp_path):
    path = export_onnx("small224", tmp_path / "small224.onnx")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 224, 224]
    path = export_onnx("resnet20", tmp_path / "resnet20.onnx")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32]
