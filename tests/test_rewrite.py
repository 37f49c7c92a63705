"""Random masks on every pattern: the rewritten graph is smaller and computes what the masked one does."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graph_zoo
from acc.errors import InputError, VerificationError
from acc.passes.analysis import analyze
from acc.passes.counting import count
from acc.passes.importer import import_model
from acc.passes.mask import masked_model
from acc.passes.oneshot import ratio_plan
from acc.passes.plan import Plan
from acc.passes.purify import purify
from acc.passes.rewrite import rewrite
from acc.passes.verify import verify_equal


def random_plan(analysis, seed):
    rng = np.random.default_rng(seed)
    keep = {}
    for g in analysis.prunable_groups:
        frozen = set(range(g.width)) - set(g.prunable)
        n = int(rng.integers(1, len(g.prunable) + 1)) if not frozen else int(rng.integers(0, len(g.prunable) + 1))
        kept = frozen | set(rng.choice(g.prunable, size=n, replace=False).tolist())
        keep[g.name] = sorted(kept)
    return Plan(keep)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name", sorted(graph_zoo.ZOO))
def test_random_masks_rewrite_and_verify(zoo_path, name, dynamo):
    analysis = analyze(import_model(zoo_path(name, dynamo)))
    for seed in range(3):
        plan = random_plan(analysis, seed)
        small = rewrite(analysis, plan)
        onnx.checker.check_model(small)
        verify_equal(masked_model(analysis, plan), small)
        if not plan.is_empty(analysis):
            assert count(small).params < count(analysis.model).params


def test_verification_catches_a_wrong_graph(zoo_path):
    analysis = analyze(import_model(zoo_path("residual")))
    plan = random_plan(analysis, 0)
    small = rewrite(analysis, plan)
    # Swap two kept filters of the first conv in the rewritten graph only: same shapes, wrong maths.
    inits = {t.name: t for t in small.graph.initializer}
    w_name = small.graph.node[0].input[1]
    w = numpy_helper.to_array(inits[w_name]).copy()
    w[[0, 1]] = w[[1, 0]]
    inits[w_name].CopyFrom(numpy_helper.from_array(w, w_name))
    with pytest.raises(VerificationError, match="output 'out'"):
        verify_equal(masked_model(analysis, plan), small)


def test_removing_a_frozen_channel_is_refused(zoo_path):
    analysis = analyze(import_model(zoo_path("padded_shortcut")))
    g = analysis.groups[1]
    frozen = [j for j in range(g.width) if g.frozen[j]]
    with pytest.raises(InputError, match="cannot be removed"):
        rewrite(analysis, Plan({g.name: [j for j in range(g.width) if j != frozen[0]]}))


def test_a_high_ratio_leaves_every_producer_a_channel(zoo_path):
    # The padded shortcut's group: c1 writes only its prunable channels, the padding is frozen.
    # Removing every prunable channel emptied c1 and purification failed on its empty weight.
    analysis = analyze(import_model(zoo_path("padded_shortcut")))
    for ratio in (0.5, 0.9):
        plan = ratio_plan(analysis, ratio)
        for g in analysis.prunable_groups:
            assert set(plan.keep.get(g.name, range(g.width))) & set(g.prunable)
        masked = masked_model(analysis, plan)
        small = purify(masked).model  # the masked graph with its dead channels cut out
        onnx.checker.check_model(small)
        verify_equal(masked, small)
        assert count(small).params < count(analysis.model).params


def test_shape_constants_follow_the_widths(zoo_path):
    analysis = analyze(import_model(zoo_path("channel_split")))
    g = analysis.groups[1]  # the 12 channels that Split [4, 8] and Slice [3:9] read
    plan = Plan({g.name: [0, 2, 4, 5, 8, 9, 11]})  # keeps 2 of split part a (0..3), 5 of b, 3 of the slice 3..8
    small = rewrite(analysis, plan)
    consts = {t.name: numpy_helper.to_array(t) for t in small.graph.initializer}
    split = next(n for n in small.graph.node if n.op_type == "Split")
    sl = next(n for n in small.graph.node if n.op_type == "Slice")
    assert list(consts[split.input[1]]) == [2, 5]
    assert int(consts[sl.input[1]][0]) == 2 and int(consts[sl.input[2]][0]) == 5
    verify_equal(masked_model(analysis, plan), small)


def test_flatten_reshape_target_follows_the_width(zoo_path):
    # dynamo writes a Reshape with an explicit feature count for torch.flatten.
    analysis = analyze(import_model(zoo_path("flatten_classifier", dynamo=True)))
    plan = ratio_plan(analysis, 0.5)
    small = rewrite(analysis, plan)
    reshape = next(n for n in small.graph.node if n.op_type == "Reshape")
    target = numpy_helper.to_array(next(t for t in small.graph.initializer if t.name == reshape.input[1]))
    assert target[-1] in (-1, 6 * 4)  # 12 conv channels halved, 2x2 features each
    verify_equal(masked_model(analysis, plan), small)


def test_depthwise_group_attribute_follows_the_width(zoo_path):
    analysis = analyze(import_model(zoo_path("depthwise")))
    plan = ratio_plan(analysis, 0.5)
    small = rewrite(analysis, plan)
    dw = next(n for n in small.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute))
    assert next(a.i for a in dw.attribute if a.name == "group") == 12


def test_ratio_half_roughly_halves_the_flops_of_a_plain_chain(model_path):
    analysis = analyze(import_model(model_path("vgg16")))
    before = count(analysis.model).flops
    plan = ratio_plan(analysis, 0.5)
    small = rewrite(analysis, plan)
    after = count(small).flops
    # Inner convs lose half their inputs and half their outputs: ~1/4; the stem and classifier less.
    assert 0.2 < after / before <= 0.5
    verify_equal(masked_model(analysis, plan), small)


def test_rewrite_keeps_untouched_initializers_byte_for_byte(zoo_path):
    analysis = analyze(import_model(zoo_path("unknown_op")))
    plan = ratio_plan(analysis, 0.5)
    small = rewrite(analysis, plan)
    before = {t.name: t.SerializeToString() for t in analysis.model.graph.initializer}
    after = {t.name: t.SerializeToString() for t in small.graph.initializer}
    frozen_conv_weight = analysis.model.graph.node[0].input[1]
    assert after[frozen_conv_weight] == before[frozen_conv_weight]
    assert [n.op_type for n in small.graph.node] == [n.op_type for n in analysis.model.graph.node]
