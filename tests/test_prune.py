"""ADMM pruning on a tiny CNN and a few hundred real CIFAR-10 images (the demo sample)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from acc import api
from acc.cli import main
from acc.errors import InputError
from acc.passes.counting import count
from acc.passes.importer import import_model
from acc.passes.verify import compare
from acc.prune.bridge import TorchModel

from onnx_export import export_legacy

DEMO = Path(__file__).resolve().parent.parent / "models" / "data" / "cifar10_demo" / "train.jpeg.npz"
FAST = dict(epochs=2, admm_iters=4, finetune_epochs=1, limit=256, batch_size=64, progress=False, admm="on")


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return export_legacy(TinyCNN(), tmp_path_factory.mktemp("tiny") / "tiny.onnx", (1, 3, 32, 32))


def test_round_trip_without_pruning_keeps_the_outputs(tiny):
    model = import_model(tiny)
    back = TorchModel(model).to_onnx()
    d = compare(model, back)[0]
    assert d.max_abs_error <= 1e-6 * d.max_abs_output


def test_admm_prunes_and_the_result_verifies(tiny, tmp_path):
    out = tmp_path / "pruned.onnx"
    admm = {**FAST, "epochs": 3, "admm_iters": 3, "batch_size": 32, "rho": "auto", "lr": 0.05}
    result = api.prune(tiny, DEMO, output=out, uniform=0.5, report=tmp_path / "r.json", **admm)
    r = result.report
    # ADMM pulls the weights toward the structure: ||W - Proj_S(W)|| / ||W|| shrinks (first: at the start).
    dist = r["admm_distance_to_structure"]
    assert len(dist) == 4 and dist[-1] < 0.6 * dist[0]
    assert r["params"]["after_dense"] < r["params"]["before"] / 2.5
    assert r["verification"][0]["max_abs_error"] <= 1e-4 * r["verification"][0]["max_abs_output"] + 1e-6
    small = onnx.load(out)
    assert count(small).params == r["params"]["after_dense"]
    assert json.loads((tmp_path / "r.json").read_text())["flops"]["after"] < r["flops"]["before"]
    assert "accuracy" in r["accuracy_after"]["val"]


def test_hard_pruned_weights_are_exactly_zero_and_stay_zero(tiny):
    result = api.prune(tiny, DEMO, uniform=0.5, **FAST)
    masked = {t.name: onnx.numpy_helper.to_array(t) for t in result.masked.graph.initializer}
    conv_w = [n.input[1] for n in result.masked.graph.node if n.op_type == "Conv"]
    # Each pruned conv has whole filters that are exactly zero after fine-tuning.
    zero_filters = [int((np.abs(masked[w]).reshape(masked[w].shape[0], -1).sum(1) == 0).sum()) for w in conv_w]
    assert all(z >= masked[w].shape[0] // 2 for z, w in zip(zero_filters, conv_w))


@pytest.mark.parametrize("channels_last", [False, True])  # the layout the run was timed to is the one it resumes in
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny, tmp_path, monkeypatch, channels_last):
    from acc.prune import admm

    monkeypatch.setattr(admm, "channels_last_is_faster", lambda *a: channels_last)
    a = api.prune(tiny, DEMO, output=tmp_path / "a.onnx", uniform=0.5, **FAST)

    calls = {"n": 0}

    def interrupt(**kw):
        calls["n"] += 1
        if kw["phase"] == "ADMM" and kw["epoch"] == 2 and kw["step"] == 2:
            raise KeyboardInterrupt

    from acc.prune import pipeline

    original = pipeline._Progress.__call__
    pipeline._Progress.__call__ = lambda self, **kw: interrupt(**kw)
    try:
        with pytest.raises(KeyboardInterrupt):
            api.prune(tiny, DEMO, output=tmp_path / "b.onnx", uniform=0.5, **FAST)
    finally:
        pipeline._Progress.__call__ = original
    assert not (tmp_path / "b.onnx").exists() and (tmp_path / "b.onnx.ckpt").exists()
    b = api.prune(tiny, DEMO, output=tmp_path / "b.onnx", uniform=0.5, resume=True, **FAST)
    wa = {t.name: onnx.numpy_helper.to_array(t) for t in a.model.graph.initializer}
    wb = {t.name: onnx.numpy_helper.to_array(t) for t in b.model.graph.initializer}
    assert wa.keys() == wb.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert a.report["history"] == b.report["history"]


def test_distillation_without_labels(tiny, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "unlabelled.npz"
    np.savez(data, inputs=rng.standard_normal((96, 3, 32, 32)).astype(np.float32))
    result = api.prune(tiny, data, uniform=0.25, **{**FAST, "limit": None})
    assert result.report["objective"].startswith("distillation")
    assert "accuracy" not in result.report["accuracy_after"]["val"]


@pytest.mark.parametrize("case", ["empty_folder", "wrong_shape", "labels_out_of_range", "labels_without_labels"])
def test_bad_data_is_a_clear_error(tiny, tmp_path, capsys, case):
    rng = np.random.default_rng(0)
    extra = []
    if case == "empty_folder":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "wrong_shape":
        data = tmp_path / "d.npz"
        np.savez(data, inputs=rng.standard_normal((20, 3, 16, 16)).astype(np.float32), labels=np.zeros(20, np.int64))
    elif case == "labels_out_of_range":
        data = tmp_path / "d.npz"
        np.savez(data, inputs=rng.standard_normal((20, 3, 32, 32)).astype(np.float32), labels=np.full(20, 12, np.int64))
    else:
        data = tmp_path / "d.npz"
        np.savez(data, inputs=rng.standard_normal((20, 3, 32, 32)).astype(np.float32))
        extra = ["--labels"]
    code = main(["prune", str(tiny), "--data", str(data), "--uniform", "0.5", "-o", str(tmp_path / "o.onnx"), "--no-progress"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()


def test_rates_file_names_real_groups(tiny, tmp_path):
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"groups": {"no-such-group": 0.5}}))
    with pytest.raises(InputError, match="not a prunable group"):
        api.prune(tiny, DEMO, rates=rates, **FAST)
