"""Layouts and shapes: NHWC models through prune and compile, --input-shape, free (symbolic) dims
kept in the output and verified at a second shape, and the bad inputs refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from acc import api
from acc.cli import main
from acc.errors import InputError
from acc.passes.analysis import analyze, input_channel_axis
from acc.passes.free_dims import keep_free_dims, second_shapes, with_dims
from acc.passes.importer import import_model
from acc.passes.inputs import image_input, infer_layout
from acc.passes.verify import verify_equal

DEMO = Path(__file__).resolve().parent.parent / "models" / "data" / "cifar10_demo" / "train.jpeg.npz"
FAST = dict(epochs=1, admm_iters=1, finetune_epochs=1, limit=64, batch_size=32, progress=False)
FAST_ARGS = ["--epochs", "1", "--admm-iters", "1", "--finetune-epochs", "1", "--limit", "64", "--batch-size", "32",
             "--no-progress"]
TINY_COMPILE = dict(rounds=1, budget_epochs=2, search_steps=2, eval_images=32, search_finetune_steps=4, limit=96,
                    test_limit=32, progress=False)


class Small(nn.Module):
    """conv-bn-relu-pool-conv-bn-relu, global pooling, linear; NHWC input permuted to NCHW first."""

    def __init__(self, nhwc: bool = False):
        super().__init__()
        self.nhwc = nhwc
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def export(module: nn.Module, path: Path, shape, dynamic_axes=None) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*shape),), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=17, do_constant_folding=False, dynamo=False, dynamic_axes=dynamic_axes)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts")
    torch.manual_seed(0)
    return {
        "nchw": export(Small(), folder / "nchw.onnx", (1, 3, 32, 32)),
        "nhwc": export(Small(nhwc=True), folder / "nhwc.onnx", (1, 32, 32, 3)),
        "free": export(Small(), folder / "free.onnx", (1, 3, 32, 32),
                       {"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}}),
    }


def dims_of(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


# -- layout and shape resolution --------------------------------------------------------------------

def test_layout_is_read_from_the_shape_where_it_is_unambiguous():
    assert infer_layout([1, 3, 32, 32]) == "NCHW"
    assert infer_layout([1, 224, 224, 3]) == "NHWC"
    assert infer_layout(["N", "H", "W", 3]) == "NHWC"
    assert infer_layout(["N", 1, "H", "W"]) == "NCHW"
    assert infer_layout([1, 16, 8, 8]) is None  # 16 channels or 16 rows: not said
    assert infer_layout([1, 3, 32]) is None


def test_image_input_pins_free_dims_from_the_size(models):
    image = image_input(onnx.load(models["free"]), size=(40, 48))
    assert (image.name, image.layout, image.shape, image.declared) == ("input", "NCHW", (1, 3, 40, 48), ("N", 3, "H", "W"))
    image = image_input(onnx.load(models["free"]), shapes={"input": [2, 3, 32, 32]}, size=(40, 48))
    assert image.shape == (2, 3, 32, 32)  # --input-shape wins over the preprocessing size
    nhwc = image_input(onnx.load(models["nhwc"]))
    assert (nhwc.layout, nhwc.size, nhwc.channels) == ("NHWC", (32, 32), 3)


def test_the_analysis_follows_the_channels_of_an_nhwc_input_into_the_first_conv(models):
    model = import_model(models["nhwc"])
    analysis = analyze(model)
    assert input_channel_axis(analysis.index, "input") == 3
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    group = next(g for g in analysis.groups if first_conv.name in g.producers)
    assert not group.is_boundary and len(group.prunable) == 8
    assert any("graph input 'input'" in b.reason for b in analysis.boundaries)


# -- NHWC end to end ---------------------------------------------------------------------------------

def test_nhwc_prune_end_to_end(models, tmp_path):
    out = tmp_path / "nhwc_small.onnx"
    result = api.prune(models["nhwc"], DEMO, output=out, uniform=0.5, **FAST)
    r = result.report
    assert r["input"]["layout"] == "NHWC" and r["input"]["shape"] == [1, 32, 32, 3]
    assert r["preprocess"]["layout"] == "NHWC"
    small = onnx.load(out)
    assert dims_of(small.graph.input[0]) == [1, 32, 32, 3]
    weights = {t.name: t for t in small.graph.initializer}
    filters = [weights[n.input[1]].dims[0] for n in small.graph.node if n.op_type == "Conv"]
    assert filters[0] <= 4 and filters[1] <= 8  # both convs lost half their filters, the first one too
    assert r["params"]["after_dense"] < r["params"]["before"] / 2
    verify_equal(result.masked, small, what="NHWC model")  # again, on fresh NHWC inputs


def test_nhwc_compile_with_a_tiny_budget(models, tmp_path):
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        result = api.compile(models["nhwc"], "2x", DEMO, out, **TINY_COMPILE)
    finally:
        os.umask(old)
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["layout"] == "NHWC" and report["rounds_detail"][0]["preprocess"]["layout"] == "NHWC"
    assert report["params"]["reduction_dense"] >= 1.9
    assert "Input 'input': NHWC, 1x32x32x3" in (out / "report.md").read_text()
    final = onnx.load(result.model_path)
    assert dims_of(final.graph.input[0]) == [1, 32, 32, 3]
    for name in ("model.onnx", "report.json", "report.md", "widths.png", "rounds.png", "search.png", "state/run.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


# -- free (symbolic) dims ----------------------------------------------------------------------------

def test_input_shape_on_prune_keeps_the_free_dims_verified_at_two_shapes(models, tmp_path):
    out = tmp_path / "free_small.onnx"
    result = api.prune(models["free"], DEMO, output=out, uniform=0.5, input_shapes={"input": [2, 3, 32, 32]}, **FAST)
    info = result.report["input"]
    assert info["shape"] == [2, 3, 32, 32] and info["declared"] == ["N", 3, "H", "W"]
    assert info["free_dims"]["kept"] and info["free_dims"]["checked_at"] == {"input": [3, 3, 64, 64]}
    small = onnx.load(out)
    assert dims_of(small.graph.input[0]) == ["N", 3, "H", "W"] and dims_of(small.graph.output[0]) == ["N", 10]
    # The masked model, given the original's free dims, against the written one: at the shape used and another.
    masked = with_dims(result.masked, {"input": ["N", 3, "H", "W"], "logits": ["N", 10]})
    for shape in ([2, 3, 32, 32], [3, 3, 48, 40]):
        verify_equal(with_dims(masked, {"input": shape}), with_dims(small, {"input": shape}), what=f"at {shape}")


def test_free_height_and_width_come_from_the_preprocessing_size(models, tmp_path):
    model = tmp_path / "free.onnx"
    shutil.copy(models["free"], model)
    (tmp_path / "free.preprocess.json").write_text(json.dumps({"size": [32, 32], "layout": "NCHW"}))
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    old = os.umask(0o027)
    try:
        code = main(["prune", str(model), "--data", str(DEMO), "--uniform", "0.5", "-o", str(out), "--report", str(report),
                     *FAST_ARGS])
    finally:
        os.umask(old)
    assert code == 0
    for path in (out, report, Path(f"{out}.ckpt")):  # model, report and checkpoint follow the umask
        assert path.stat().st_mode & 0o777 == 0o640, path
    info = json.loads(report.read_text())["input"]
    assert info["shape"] == [1, 3, 32, 32] and info["free_dims"]["kept"]
    assert dims_of(onnx.load(out).graph.input[0]) == ["N", 3, "H", "W"]


@pytest.mark.parametrize("ratio", [None, 0.5])
def test_shrink_keeps_the_free_dims(models, tmp_path, ratio):
    out = tmp_path / "out.onnx"
    result = api.shrink(models["free"], output=out, ratio=ratio, input_shapes={"input": [1, 3, 32, 32]})
    small = onnx.load(out)
    assert dims_of(small.graph.input[0]) == ["N", 3, "H", "W"] and result.model.graph.input[0] == small.graph.input[0]
    original = onnx.load(models["free"])
    if ratio is None:  # lossless: equal to the original at any shape
        verify_equal(with_dims(original, {"input": [3, 3, 40, 48]}), with_dims(small, {"input": [3, 3, 40, 48]}))


def test_second_shapes_move_only_the_free_dims(models):
    original = onnx.load(models["free"])
    assert second_shapes(original, {"input": [1, 3, 32, 32]}) == {"input": [3, 3, 64, 64]}
    assert second_shapes(original, {"input": [3, 3, 8, 8]}) == {"input": [2, 3, 16, 16]}
    assert second_shapes(onnx.load(models["nchw"]), {"input": [1, 3, 32, 32]}) == {"input": [1, 3, 32, 32]}


def _resize_to_own_shape() -> onnx.ModelProto:
    """X [N, 3, H, W] -> Resize(X, sizes=Shape(X)) -> 1x1 Conv: the import folds Shape(X) at the pinned shape."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Resize", ["x", "", "", "s"], ["r"], mode="nearest"),
             helper.make_node("Conv", ["r", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_free_dims_stay_pinned_when_the_import_baked_the_shape_in():
    original = _resize_to_own_shape()
    imported = import_model(original, {"x": [1, 3, 8, 8]})
    assert not any(n.op_type == "Shape" for n in imported.graph.node)  # folded to the constant 1x3x8x8
    kept = keep_free_dims(original, imported, imported, imported)
    assert not kept.kept and "at x=3x3x16x16 it does not compute what the original does" in kept.reason
    assert dims_of(kept.model.graph.input[0]) == [1, 3, 8, 8]


def test_free_dims_are_kept_where_nothing_baked_them_in(models):
    original = onnx.load(models["free"])
    imported = import_model(original, {"input": [1, 3, 32, 32]})
    kept = keep_free_dims(original, imported, imported, imported)
    assert kept.kept and kept.reason is None
    assert dims_of(kept.model.graph.input[0]) == ["N", 3, "H", "W"]


# -- bad input: one line, exit 2, nothing written ----------------------------------------------------

def _mlp(path: Path) -> Path:
    return export(nn.Sequential(nn.Linear(20, 10)), path, (1, 20))


def refused(capsys, argv, out: Path, *words) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert not out.exists()
    return err


def test_a_layout_that_contradicts_the_shape_is_refused(models, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    refused(capsys, ["prune", models["nchw"], "--data", DEMO, "--uniform", "0.5", "-o", out, "--layout", "NHWC"], out,
            "--layout NHWC contradicts input 'input' of shape 1x3x32x32, which reads as NCHW")
    model = tmp_path / "m.onnx"
    shutil.copy(models["nhwc"], model)
    (tmp_path / "m.preprocess.json").write_text(json.dumps({"layout": "NCHW"}))
    refused(capsys, ["prune", model, "--data", DEMO, "--uniform", "0.5", "-o", out], out,
            "the layout in m.preprocess.json NCHW contradicts", "reads as NHWC")
    outdir = tmp_path / "outdir"
    refused(capsys, ["compile", models["nchw"], "--rate", "2x", "--data", DEMO, "-o", outdir, "--layout", "NHWC"], outdir,
            "contradicts")


@pytest.mark.parametrize("shape, words", [
    ("nope=1x3x32x32", ["names no input of the model: 'nope' (inputs: input)"]),
    ("input=1x3x32", ["rank 4", "rank 3"]),
    ("input=1x3x16x16", ["does not fit the model's shape 1x3x32x32"]),
])
def test_a_bad_input_shape_is_refused(models, tmp_path, capsys, shape, words):
    out = tmp_path / "out.onnx"
    refused(capsys, ["prune", models["nchw"], "--data", DEMO, "--uniform", "0.5", "-o", out, "--input-shape", shape], out, *words)
    outdir = tmp_path / "outdir"
    refused(capsys, ["compile", models["nchw"], "--rate", "2x", "--data", DEMO, "-o", outdir, "--input-shape", shape], outdir, *words)
    refused(capsys, ["analyze", models["nchw"], "--input-shape", shape], out, *words)


def test_a_model_without_an_image_input_is_refused(tmp_path, capsys):
    mlp = _mlp(tmp_path / "mlp.onnx")
    out, outdir = tmp_path / "out.onnx", tmp_path / "outdir"
    for argv, target in ([["prune", mlp, "--data", DEMO, "--uniform", "0.5", "-o", out], out],
                         [["compile", mlp, "--rate", "2x", "--data", DEMO, "-o", outdir], outdir]):
        refused(capsys, argv, target, "one 4-D float image input, NCHW or NHWC", "'input' 1x20 float")


def test_free_height_and_width_without_a_size_are_refused(models, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    refused(capsys, ["prune", models["free"], "--data", DEMO, "--uniform", "0.5", "-o", out], out,
            "free height or width", "--input-shape input=1x3x224x224")


def test_image_input_errors_are_input_errors(models):
    with pytest.raises(InputError, match="must be one of NCHW, NHWC"):
        image_input(onnx.load(models["nchw"]), layout="CHWN")
