"""Lossless purification: planted dead channels are removed and the outputs do not change."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import graph_zoo
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
