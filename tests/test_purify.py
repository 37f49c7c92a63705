"""Lossless purification: planted dead channels are removed and the outputs do not change."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import graph_zoo
from acc import api
from acc.passes.counting import count
from acc.passes.importer import import_model
from acc.passes.shrink import shrink
from acc.passes.verify import compare


def export(module, name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    sample = torch.randn(*graph_zoo.ZOO[name][1])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (sample,), str(path), input_names=["input"], output_names=["out"],
                          opset_version=17, do_constant_folding=False, dynamo=False)
    return path


def widths(result):
    return {r["group"]: r["width_after"] for r in result.group_rows()}


def kill_filter(conv, bn, index):
    """Nobody writes the channel: zero filter, zero bias, and a BN that maps 0 to 0."""
    with torch.no_grad():
        conv.weight[index] = 0
        if conv.bias is not None:
            conv.bias[index] = 0
        if bn is not None:
            bn.bias[index] = 0
            bn.running_mean[index] = 0


def test_nobody_writes_through_bn_relu_and_residual(tmp_path):
    m = graph_zoo.build("residual")
    c1, b1, _, _ = m.blocks[0]
    kill_filter(c1, b1, [2, 5])
    result = shrink(export(m, "residual", tmp_path))
    assert widths(result)["/blocks.0.0/Conv"] == 6
    assert result.after.params < result.before.params
    assert all(d.max_abs_error <= 1e-5 * max(d.max_abs_output, 1) for d in result.diffs)


def test_nobody_reads_through_flatten(tmp_path):
    m = graph_zoo.build("flatten_classifier")
    with torch.no_grad():
        m.fc1.weight[:, 5 * 4:6 * 4] = 0  # conv channel 5 owns features 20..23
        m.fc2.weight[:, [3, 30]] = 0  # fc1 outputs 3 and 30
    result = shrink(export(m, "flatten_classifier", tmp_path))
    w = widths(result)
    assert w["/features/features.4/Conv"] == 11 and w["/fc1/Gemm"] == 30


def test_dead_channels_in_depthwise_and_squeeze_excite(tmp_path):
    m = graph_zoo.build("depthwise")
    dw_conv, dw_bn = m.dw[0], m.dw[1]
    kill_filter(dw_conv, dw_bn, [1, 7, 20])  # the depthwise output goes dead
    result = shrink(export(m, "depthwise", tmp_path))
    assert widths(result)["/expand/expand.0/Conv"] == 21

    m = graph_zoo.build("squeeze_excite")
    with torch.no_grad():
        m.reduce.weight[[1]] = 0
        m.reduce.bias[[1]] = 0  # relu(0) = 0 feeds expand: reduce channel 1 is dead
    result = shrink(export(m, "squeeze_excite", tmp_path))
    assert widths(result)["/reduce/Conv"] == 3


def test_removal_runs_to_a_fixed_point(tmp_path):
    m = graph_zoo.build("flatten_classifier")
    conv2 = m.features[4]
    with torch.no_grad():
        m.fc1.weight[:, 7 * 4:8 * 4] = 0  # conv2 channel 7 unread ...
        rows = [r for r in range(12) if r != 7]
        conv2.weight[rows, 3] = 0  # ... and conv1 channel 3 read only by conv2's filter 7
    result = shrink(export(m, "flatten_classifier", tmp_path))
    w = widths(result)
    assert w["/features/features.4/Conv"] == 11 and w["/features/features.0/Conv"] == 7
    assert result.plan.keep["/features/features.0/Conv"] == [0, 1, 2, 4, 5, 6, 7]


def _zero_filter_then(activation: str):
    """conv1 (filter 0 all zero, bias 0) -> activation -> conv2 -> output."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w1[0] = 0
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node(activation, ["a"], ["b"], name="act"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("activation, dead", [("Relu", True), ("Tanh", True), ("Sigmoid", False), ("Softplus", False)])
def test_activations_with_nonzero_f0_keep_the_channel(activation, dead):
    model = _zero_filter_then(activation)
    result = shrink(model)
    assert widths(result)["c1"] == (3 if dead else 4)
    worst = compare(model, result.model)[0]
    assert worst.max_abs_error <= 1e-5 * worst.max_abs_output


@pytest.mark.parametrize("name", sorted(graph_zoo.ZOO))
def test_purify_of_a_model_without_dead_channels_changes_nothing(zoo_path, name):
    result = shrink(zoo_path(name))
    assert result.after.params == result.before.params


# -- never growing: nothing carried twice, nothing folded bigger, and a guard for the rest


def _reshaped_classifier():
    """conv -> flatten -> MatMul whose weight the graph reshapes at run time (a 4-D tensor made
    2-D by a Reshape of constants), as old converters wrote classifiers: the import folds it."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 4, 5)).astype(np.float32), "w_fc4d"),
        numpy_helper.from_array(np.array([64, 5], np.int64), "fc_shape"),
        numpy_helper.from_array(np.array([1, 64], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Reshape", ["b", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Reshape", ["w_fc4d", "fc_shape"], ["w_fc"], name="fc_weight"),
        helper.make_node("MatMul", ["flat", "w_fc"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_folded_weight_is_not_carried_twice():
    model = _reshaped_classifier()
    imported = import_model(model)
    assert "w_fc4d" not in {t.name for t in imported.graph.initializer}
    result = shrink(model)
    assert count(result.model).params == result.before.params == 4 * 27 + 320
    assert result.model.ByteSize() <= model.ByteSize() and result.unchanged is None


def _expanded_bias():
    """A per-channel constant broadcast by Expand to the full feature map before an Add: folding
    it would write C*H*W numbers where C were enough."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32), "bias"),
        numpy_helper.from_array(np.array([1, 8, 16, 16], np.int64), "full"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Expand", ["bias", "full"], ["bias_full"], name="expand"),
        helper.make_node("Add", ["a", "bias_full"], ["b"], name="add"),
        helper.make_node("Relu", ["b"], ["c"], name="relu"),
        helper.make_node("Conv", ["c", "w2"], ["y"], name="c2"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_expanded_constant_is_not_folded_bigger():
    model = _expanded_bias()
    imported = import_model(model)
    assert any(n.op_type == "Expand" for n in imported.graph.node)
    result = shrink(model)
    assert result.after.params <= result.before.params
    assert result.model.ByteSize() <= model.ByteSize()


def test_a_result_that_would_grow_returns_the_input_unchanged(monkeypatch):
    import acc.passes.shrink as shrink_module

    real = shrink_module.purify

    def padded(model):
        result = real(model)  # the real purification, plus a parameter nobody reads
        result.model.graph.initializer.append(numpy_helper.from_array(np.zeros(10_000, np.float32), "ballast"))
        return result

    monkeypatch.setattr(shrink_module, "purify", padded)
    model = _zero_filter_then("Relu")
    result = shrink(model)
    assert result.model is model and result.after.params == result.before.params
    assert "returned unchanged" in result.unchanged and "more parameters" in result.unchanged
    assert result.report()["unchanged"] == result.unchanged


def _given_bytes(path):
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())


def _never_grows(path, tmp_path):
    out = tmp_path / "purified.onnx"
    result = api.shrink(path, output=out)
    assert count(onnx.load(out)).params <= result.before.params
    assert out.stat().st_size <= _given_bytes(path)
    return result


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", sorted(graph_zoo.ZOO))
def test_lossless_shrink_of_every_zoo_graph_never_grows(zoo_path, tmp_path, name, dynamo):
    _never_grows(zoo_path(name, dynamo), tmp_path)


MODELS = ["vgg16", "resnet18", "resnet20", "resnet56", "mobilenetv2", "resnet18_imagenet", "small224"]


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", MODELS)
def test_lossless_shrink_of_every_model_never_grows(model_path, tmp_path, name, dynamo):
    _never_grows(model_path(name, dynamo), tmp_path)


def test_lossless_shrink_of_the_shipped_model_never_grows(tmp_path):
    _never_grows(Path(__file__).resolve().parent.parent / "models" / "resnet20.onnx", tmp_path)


# -- grouped convolutions: a position dead in every group goes, on both sides


class ResNeXtBlock(torch.nn.Module):
    """1x1 -> BN -> ReLU -> grouped 3x3 (4 groups) -> BN -> ReLU -> 1x1, as in a ResNeXt block."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.a, self.bn_a = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.g, self.bn_g = nn.Conv2d(8, 12, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(12)
        self.c = nn.Conv2d(12, 6, 1)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        return self.c(torch.relu(self.bn_g(self.g(x)))).mean((2, 3))


def _resnext(tmp_path, kill):
    torch.manual_seed(0)
    m = ResNeXtBlock().eval()
    with torch.no_grad():
        for bn in (m.bn_a, m.bn_g):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
        kill(m)
    path = tmp_path / "resnext.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 3, 8, 8),), str(path), input_names=["input"], output_names=["out"],
                          opset_version=17, do_constant_folding=False, dynamo=False)
    return path


def _grouped_weight(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute))
    w = next(t for t in model.graph.initializer if t.name == conv.input[1])
    return list(w.dims), next(a.i for a in conv.attribute if a.name == "group")


def test_grouped_conv_input_position_dead_in_every_group(tmp_path):
    # Input position 1 of every group is channels 1, 3, 5, 7 of conv a: nobody writes them.
    path = _resnext(tmp_path, lambda m: kill_filter(m.a, m.bn_a, [1, 3, 5, 7]))
    result = shrink(path)
    assert widths(result)["/a/Conv"] == 1
    assert _grouped_weight(result.model) == ([12, 1, 3, 3], 4)  # per-group input width 2 -> 1
    worst = compare(onnx.load(path), result.model)[0]
    assert worst.max_abs_error <= 1e-5 * worst.max_abs_output


def test_grouped_conv_output_position_dead_in_every_group(tmp_path):
    def kill(m):
        kill_filter(m.g, m.bn_g, [0, 3, 6, 9])  # output position 0 of every group: nobody writes it
        m.c.weight[:, [2, 5, 8, 11]] = 0  # output position 2 of every group: nobody reads it

    result = shrink(_resnext(tmp_path, kill))
    assert widths(result)["/g/Conv"] == 1
    assert _grouped_weight(result.model) == ([4, 2, 3, 3], 4)


def test_a_position_dead_in_only_some_groups_stays(tmp_path):
    path = _resnext(tmp_path, lambda m: kill_filter(m.a, m.bn_a, [1, 3, 5]))  # group 3 still reads channel 7
    result = shrink(path)
    assert widths(result)["/a/Conv"] == 2
    assert result.after.params <= result.before.params
