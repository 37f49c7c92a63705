"""The channel analysis finds the groups each pattern implies, and the boundaries with reasons."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from acc.passes.analysis import analyze
from acc.passes.counting import count
from acc.passes.importer import import_model


def groups_of(path):
    a = analyze(import_model(path))
    return a, [(g.width, len(g.prunable)) for g in a.groups]


# (width, prunable) per group, in graph order; the input group and the output group are boundaries.
EXPECTED = {
    # stem + both identity blocks' outputs are one group (residual Adds); the projection block's
    # conv2 and shortcut merge into one group of 16.
    "residual": [(3, 0), (8, 8), (8, 8), (8, 8), (16, 16), (16, 16), (10, 0)],
    # each concat part keeps its own group; the head reads all of them.
    "dense_concat": [(3, 0), (6, 6), (4, 4), (4, 4), (5, 0)],
    # depthwise ties its input and output channels: expand/dw is one group of 24.
    "depthwise": [(3, 0), (8, 8), (24, 24), (4, 0)],
    # groups=4: 8 inputs tie to 2 positions, 12 outputs to 3.
    "grouped": [(3, 0), (2, 2), (3, 3), (6, 0)],
    # SE: the gate's expand conv joins the gated feature map's group; the reduce conv is its own.
    "squeeze_excite": [(3, 0), (16, 16), (4, 4), (8, 0)],
    "flatten_classifier": [(3, 0), (8, 8), (12, 12), (32, 32), (10, 0)],
    "unet": [(3, 0), (8, 8), (16, 16), (4, 4), (8, 8), (8, 8), (2, 0)],
    "channel_split": [(3, 0), (12, 12), (6, 6), (6, 6), (6, 6), (4, 0)],
    "activations": [(3, 0), (8, 8), (8, 8), (4, 0)],
    "channels_last_matmul": [(3, 0), (8, 8), (12, 12), (5, 0)],
    # the shortcut pads 2 zero channels each side: the 4 conv channels paired with padding stay.
    "padded_shortcut": [(3, 0), (8, 4), (3, 0)],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_groups_found(zoo_path, name):
    _, found = groups_of(zoo_path(name))
    assert found == EXPECTED[name]


@pytest.mark.parametrize("name", ["residual", "depthwise", "squeeze_excite", "flatten_classifier", "unet", "channel_split", "grouped"])
def test_both_exporters_analyse_the_same(zoo_path, name):
    a_legacy, legacy = groups_of(zoo_path(name, dynamo=False))
    a_dynamo, dynamo = groups_of(zoo_path(name, dynamo=True))
    assert legacy == dynamo
    assert count(a_legacy.model).flops == count(a_dynamo.model).flops


def test_boundaries_carry_reasons(zoo_path):
    a, _ = groups_of(zoo_path("flatten_classifier"))
    reasons = [b.reason for b in a.boundaries]
    assert "graph input 'input'" in reasons
    assert "reaches graph output 'out'" in reasons


def test_op_that_pools_over_channels_is_a_boundary_and_the_rest_still_prunes(zoo_path):
    # torch decomposes LocalResponseNorm into a pool over the channel axis of a 5-D view.
    a, found = groups_of(zoo_path("unknown_op"))
    c1 = a.groups[1]
    assert c1.is_boundary
    assert any("pools over the axis that carries the channels" in b.reason for b in a.boundaries)
    assert (8, 8) in found  # c2 after the boundary is still prunable


def _custom_op_graph():
    """conv -> com.example.Mystery -> conv -> conv: the unknown op freezes only what it touches."""
    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    inits = []
    for name, shape in [("w1", (4, 3, 3, 3)), ("w2", (6, 4, 3, 3)), ("w3", (5, 6, 1, 1)), ("w4", (2, 5, 1, 1))]:
        t = w(*shape)
        t.name = name
        inits.append(t)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Mystery", ["a"], ["b"], domain="com.example", name="m"),
        helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1], name="c2"),
        helper.make_node("Relu", ["c"], ["d"], name="r"),
        helper.make_node("Conv", ["d", "w3"], ["e"], name="c3"),
        helper.make_node("Relu", ["e"], ["f"], name="r2"),
        helper.make_node("Conv", ["f", "w4"], ["y"], name="c4"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits,
        value_info=[helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 8, 8])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def test_unknown_op_is_a_boundary_not_an_error():
    a = analyze(import_model(_custom_op_graph()))
    by_name = {g.name: g for g in a.groups}
    assert by_name["c1"].is_boundary
    assert any("Mystery 'm': op not in the propagation table" in r for r in by_name["c1"].frozen)
    assert len(by_name["c2"].prunable) == 6 and len(by_name["c3"].prunable) == 5


def test_shared_constant_read_by_an_unclaiming_node_is_frozen():
    model = _custom_op_graph()
    # w3 also read by an Identity whose output is a graph output: slicing it would change that output.
    model.graph.node.append(helper.make_node("Identity", ["w3"], ["w3_copy"], name="id"))
    model.graph.output.append(helper.make_tensor_value_info("w3_copy", TensorProto.FLOAT, [5, 6, 1, 1]))
    a = analyze(import_model(model))
    by_name = {g.name: g for g in a.groups}
    assert by_name["c2"].is_boundary and by_name["c3"].is_boundary


@pytest.mark.parametrize(
    "name, params, flops",
    [("vgg16", 14.99e6, 313.5e6), ("resnet18", 11.17e6, 555.4e6), ("resnet20", 0.272e6, 40.8e6), ("mobilenetv2", 2.24e6, 89.0e6)],
)
def test_model_counts_match_the_literature(model_path, name, params, flops):
    c = count(import_model(model_path(name)))
    assert c.params == pytest.approx(params, rel=0.005)
    assert c.flops == pytest.approx(flops, rel=0.005)


@pytest.mark.parametrize("name, groups", [("vgg16", 16), ("resnet18", 14), ("resnet20", 14), ("resnet56", 32), ("mobilenetv2", 28)])
def test_models_analyse_the_same_with_both_exporters(model_path, name, groups):
    a, legacy = groups_of(model_path(name, dynamo=False))
    _, dynamo = groups_of(model_path(name, dynamo=True))
    assert legacy == dynamo
    assert len(a.groups) == groups
    assert len(a.prunable_groups) == groups - 2  # only the input and the logits are boundaries


def test_transpose_moves_the_channel_axis(zoo_path):
    a, _ = groups_of(zoo_path("channels_last_matmul"))
    transposed = [t for t, info in a.tensor_channels.items() if info.axis == 3]
    assert transposed, "the NHWC tensor should carry its channels on axis 3"
