"""Intermediate-feature distillation (acc.prune.feature_distill): the tapped tensors line up channel
for channel with the teacher's, both teachers (onnxruntime, torch) give the same targets, the term
trains the small model, and a bad weight is a one-line error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from acc import api
from acc.errors import InputError
from acc.passes.analysis import analyze
from acc.passes.importer import import_model
from acc.passes.mask import masked_model
from acc.passes.oneshot import ratio_plan
from acc.passes.purify import purify
from acc.prune.bridge import TorchModel
from acc.prune.feature_distill import FeatureDistiller, feature_loss, feature_taps
from acc.prune.teacher import OnnxRuntimeTeacher, teacher_for
from interrupt import killed_at_fine_tuning

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "data" / "cifar10_demo" / "train.jpeg.npz"


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> ort.InferenceSession:
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


def _cut(graph: onnx.ModelProto, ratio: float):
    """The graph with `ratio` of every group removed: (analysis, masked full graph, small graph, plan)."""
    analysis = analyze(graph)
    masked = masked_model(analysis, ratio_plan(analysis, ratio))
    small = purify(masked)
    return analysis, masked, small.model, small.plan


@pytest.mark.parametrize("pattern", ["residual", "depthwise", "dense_concat", "grouped"])
def test_the_small_models_tapped_channels_are_the_teachers_kept_ones(zoo_path, pattern):
    """The masked full model and the small one it becomes compute the same kept channels: each tap's
    small tensor equals the full tensor at the tap's kept indices, so the targets are the right channels."""
    graph = import_model(zoo_path(pattern))
    analysis, masked, small, plan = _cut(graph, 0.5)
    taps = feature_taps(masked, small, analysis, plan)
    assert taps, "every pattern has a conv reading an inner tensor"
    assert any(len(t.kept) < analysis.index.shape(t.tensor)[1] for t in taps), "some tapped tensor lost channels"
    names = [t.tensor for t in taps]
    x = np.random.default_rng(0).standard_normal(tuple(analysis.index.shape(analysis.index.input_names[0]))).astype(np.float32)
    full_run = _with_outputs(masked, names)
    small_run = _with_outputs(small, names)
    full = dict(zip([o.name for o in full_run.get_outputs()], full_run.run(None, {full_run.get_inputs()[0].name: x})))
    cut = dict(zip([o.name for o in small_run.get_outputs()], small_run.run(None, {small_run.get_inputs()[0].name: x})))
    for tap in taps:
        np.testing.assert_allclose(cut[tap.tensor], full[tap.tensor][:, tap.kept], rtol=1e-4, atol=1e-5)


def test_a_wider_teacher_is_tapped_only_where_it_has_the_rounds_shapes(zoo_path):
    """In a progressive run's later rounds the teacher (the original) is wider than the round's model:
    only tensors read by convs the earlier rounds left whole are tapped."""
    original = import_model(zoo_path("residual"))
    _, _, round1, _ = _cut(original, 0.5)
    analysis, masked, small, plan = _cut(round1, 0.25)
    all_taps = feature_taps(masked, small, analysis, plan)
    from_original = feature_taps(original, small, analysis, plan)
    original_shapes = {t.name: tuple(t.dims) for t in original.graph.initializer}
    round_shapes = {t.name: tuple(t.dims) for t in round1.graph.initializer}
    readers = {n.input[0]: n.input[1] for n in small.graph.node if n.op_type == "Conv"}
    assert {t.tensor for t in from_original} == {t.tensor for t in all_taps
                                                if original_shapes[readers[t.tensor]] == round_shapes[readers[t.tensor]]}
    assert len(from_original) < len(all_taps)


def test_onnxruntime_and_torch_teachers_give_the_same_targets(model_path):
    graph = import_model(model_path("resnet20"))
    analysis, masked, small, plan = _cut(graph, 0.5)
    taps = feature_taps(graph, small, analysis, plan)
    student = TorchModel(small).module.train()
    x = torch.randn(4, 3, 32, 32)
    values = {}
    for kind in ("onnxruntime", "torch"):
        module = TorchModel(graph).module
        teacher = teacher_for(graph, module, "cpu") if kind == "onnxruntime" else module.eval()
        assert isinstance(teacher, OnnxRuntimeTeacher) == (kind == "onnxruntime")
        distiller = FeatureDistiller(taps, student, teacher, graph, weight=1.0)
        outs = distiller.teach(x)
        assert outs.shape == (4, 10)
        values[kind] = dict(distiller.teach.values)
        student(x)
        assert distiller.armed() and set(distiller.student_values) == {t.tensor for t in taps}
        term = distiller.loss()
        assert term is not None and float(term.detach()) > 0 and not distiller.armed()
        distiller.close()
        student(x)  # hooks removed: nothing recorded any more
        assert not distiller.student_values
    assert set(values["onnxruntime"]) == set(values["torch"]) == {t.tensor for t in taps}
    for name, value in values["torch"].items():
        torch.testing.assert_close(values["onnxruntime"][name], value, rtol=1e-4, atol=1e-4)


def test_the_loss_is_zero_on_the_teachers_own_channels():
    kept = np.array([0, 2])
    t = torch.randn(3, 4, 5, 5)
    from acc.prune.feature_distill import Tap

    taps = [Tap("x", "conv", kept)]
    assert float(feature_loss({"x": t[:, kept]}, {"x": t}, taps)) == 0.0
    assert float(feature_loss({"x": torch.zeros(3, 2, 5, 5)}, {"x": t}, taps)) > 0.5  # about 1: MSE over the variance
    assert feature_loss({}, {"x": t}, taps) is None


def test_the_feature_term_trains_the_small_model(zoo_path):
    model = zoo_path("residual")
    fast = dict(uniform=0.5, admm="off", epochs=0, finetune_epochs=1, limit=256, batch_size=64, progress=False, seed=0,
                log=lambda *a, **k: None)
    plain = api.prune(model, DEMO, **fast)
    taught = api.prune(model, DEMO, feature_distill=1.0, **fast)
    record = next(h for h in taught.report["history"] if h["phase"] == "feature_distill")
    assert record["tensors"] >= 3 and record["weight"] == 1.0
    assert not any(h["phase"] == "feature_distill" for h in plain.report["history"])
    loss = {name: next(h["train_loss"] for h in r.report["history"] if h["phase"] == "finetune")
            for name, r in (("plain", plain), ("taught", taught))}
    assert loss["taught"] > loss["plain"]  # the same run plus a positive term
    assert all(d["max_abs_error"] <= 1e-4 * d["max_abs_output"] + 1e-6 for d in taught.report["verification"])


def test_a_bad_feature_weight_is_refused_before_anything_runs(zoo_path):
    """(The CLI's one-line error and exit 2: tests/test_training_recipe.py.)"""
    for weight in (-1, 11, float("nan")):
        with pytest.raises(InputError, match="--feature-distill"):
            api.prune(zoo_path("residual"), DEMO, uniform=0.5, feature_distill=weight, progress=False)


def test_a_batch_onnxruntime_cannot_run_hands_the_taps_to_the_torch_module(model_path):
    graph = import_model(model_path("resnet20"))
    analysis, _, small, plan = _cut(graph, 0.5)
    taps = feature_taps(graph, small, analysis, plan)
    module = TorchModel(graph).module
    distiller = FeatureDistiller(taps, TorchModel(small).module, teacher_for(graph, module, "cpu"), graph, weight=1.0)
    x = torch.randn(2, 3, 32, 32)
    by_onnxruntime = (distiller.teach(x), dict(distiller.teach.values))
    distiller.teach.session = None  # stands for a batch onnxruntime refuses
    got = distiller.teach(x)
    assert distiller.teach.fallback is not None
    torch.testing.assert_close(got, by_onnxruntime[0], rtol=1e-4, atol=1e-4)
    assert set(distiller.teach.values) == set(by_onnxruntime[1])
    for name, value in by_onnxruntime[1].items():
        torch.testing.assert_close(distiller.teach.values[name], value, rtol=1e-4, atol=1e-4)
    distiller.close()


def test_a_resumed_run_with_features_ends_where_the_whole_run_ends(zoo_path, tmp_path):
    """The scales come from a fixed batch, not the first one a run happens to draw: a run killed in
    the middle of fine-tuning resumes to the uninterrupted run's weights and history."""
    model = zoo_path("residual")
    # workers=0: images decoded in this process (no loader forked beside the interrupted run's threads)
    fast = dict(uniform=0.5, admm="off", epochs=0, finetune_epochs=3, limit=256, batch_size=64, progress=True,
                seed=0, feature_distill=1.0, workers=0, log=lambda *a, **k: None)
    whole = api.prune(model, DEMO, output=tmp_path / "whole.onnx", **fast)

    out = tmp_path / "cut.onnx"
    with killed_at_fine_tuning(epoch=2, step=2):
        api.prune(model, DEMO, output=out, **fast)
    resumed = api.prune(model, DEMO, output=out, resume=True, **{**fast, "progress": False})
    assert resumed.report["history"] == whole.report["history"]
    a = {t.name: onnx.numpy_helper.to_array(t) for t in resumed.model.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in whole.model.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
