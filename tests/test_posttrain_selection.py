"""Channel choice for post-training pruning (acc.prune.posttrain.selection), and the same recovery
right after a training run's hard prune (acc.prune.posttrain.after_cut)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from acc import api
from acc.data.tensor_data import TensorData
from acc.passes.analysis import analyze
from acc.passes.importer import import_model
from acc.prune.bridge import TorchModel
from acc.prune.posttrain.normal_equations import NormalEquations
from acc.prune.posttrain.recover import apply_rates
from acc.prune.posttrain.selection import RIDGE, _Consumer, reconstruction_rankings
from acc.prune.rates import Rates
from onnx_export import export_legacy

ROOT = Path(__file__).resolve().parent.parent
RESNET20 = ROOT / "models" / "resnet20.onnx"
DEMO = ROOT / "models" / "data" / "cifar10_demo"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ridge_objective(X, Y, lam):
    """min_W ||X W - Y||^2 + lam ||W||^2, and its minimiser."""
    A = X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype)
    W = torch.linalg.solve(A, X.T @ Y)
    return float((X @ W - Y).pow(2).sum() + lam * W.pow(2).sum()), W


def test_elimination_cost_and_update_equal_a_direct_least_squares_solve():
    g = torch.Generator().manual_seed(0)
    channels, taps, outputs = 5, 3, 4
    X = torch.randn(200, channels * taps, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(channels * taps, outputs, generator=g, dtype=torch.float64) + 0.3 * torch.randn(200, outputs, generator=g, dtype=torch.float64)
    eq = NormalEquations(1, channels * taps, outputs)
    eq.add(X[:, None].float(), Y[:, None].float())
    columns = {j: torch.arange(j * taps, (j + 1) * taps) for j in range(channels)}
    consumer = _Consumer(eq, columns)
    A = eq.A[0]
    lam = RIDGE * float(torch.diagonal(A).mean())
    Xf, Yf = X.float().double(), Y.float().double()  # what the normal equations saw
    full, _ = ridge_objective(Xf, Yf, lam)
    predicted = consumer.costs(list(range(channels)))
    for j in (1, 3):  # drop channel 1, then 3: each cost is the exact rise of the ridge objective
        keep = torch.cat([columns[c] for c in range(channels) if c not in ({1} if j == 1 else {1, 3})])
        reduced, W = ridge_objective(Xf[:, keep], Yf, lam)
        if j == 1:
            assert float(predicted[1]) * consumer.scale == pytest.approx(reduced - full, rel=1e-6)
            before = full
        else:
            assert float(consumer.costs([3])[0]) * consumer.scale == pytest.approx(reduced - before, rel=1e-6)
        consumer.drop(j)
        assert torch.allclose(consumer.W, W, atol=1e-8)
        before = reduced


class Redundant(nn.Module):
    """conv1's channels 0 and 3 are the two with the largest L1 norms, and channel 3 is 4x channel 0
    (ReLU keeps the factor): the next conv can rebuild either from the other."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv1.weight[0] *= 3.0
            self.conv1.weight[3] = 4.0 * self.conv1.weight[0]

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x))).mean((2, 3))


def test_a_channel_the_next_layer_can_rebuild_goes_first_though_l1_keeps_it(tmp_path):
    torch.manual_seed(0)
    path = export_legacy(Redundant(), tmp_path / "redundant.onnx", (1, 3, 8, 8))
    model = import_model(str(path))
    analysis = analyze(model)
    group = next(g for g in analysis.prunable_groups if g.width == 6)
    original, bridge = TorchModel(model), TorchModel(model)
    data = TensorData(torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    scores = reconstruction_rankings(analysis, original, data, [group.name])[group.name]
    first, second = torch.argsort(scores)[:2].tolist()
    assert first in (0, 3) and second not in (0, 3)  # once one of the pair is gone, the other is needed
    # One channel out: L1 removes a small one; the ranking removes one of the pair.
    plan_l1 = apply_rates(analysis, TorchModel(model), Rates({group.name: 1 / 6}))
    plan = apply_rates(analysis, bridge, Rates({group.name: 1 / 6}), {group.name: scores})
    removed = lambda p: set(range(6)) - set(p.keep[group.name])  # noqa: E731
    assert removed(plan) == {first} and not removed(plan_l1) & {0, 3}


def test_prune_recover_cut_refits_after_the_hard_prune_and_reports_it(tmp_path):
    report = tmp_path / "report.json"
    result = api.prune(str(RESNET20), str(DEMO), str(tmp_path / "out.onnx"), uniform=0.3, admm="off",
                       finetune_epochs=0, limit=300, test_limit=200, progress=False, recover_cut=160, cut_ranking=True,
                       report=str(report), log=lambda *a, **k: None)
    cut = next(h for h in result.report["history"] if h["phase"] == "hard_prune")
    recovery = cut["recovery"]
    assert recovery["refitted_layers"] > 10 and recovery["calibration_images"] == 160
    assert recovery["ranked_groups"] == len(result.report["groups"])  # one-shot: every cut group ranked
    # What the recovery is for: the cut model's validation loss falls a long way before any training.
    assert cut["val_loss_recovered"] < 0.7 * cut["val_loss_after"]
    assert json.loads(report.read_text())["history"][0]["recovery"]["refitted_layers"] == recovery["refitted_layers"]


@pytest.mark.parametrize("flag, expect", [([], "refit by norms"), (["--recover-cut", "0"], "none")])
def test_prune_cli_recovers_the_cut_by_default_and_not_with_0(tmp_path, capsys, flag, expect):
    from acc.cli import main

    report = tmp_path / "report.json"
    code = main(["prune", str(RESNET20), "--data", str(DEMO), "-o", str(tmp_path / "out.onnx"), "--uniform", "0.3",
                 "--admm", "off", "--finetune-epochs", "0", "--limit", "300", "--no-progress", "--report", str(report),
                 *flag])
    capsys.readouterr()
    assert code == 0
    cut = next(h for h in json.loads(report.read_text())["history"] if h["phase"] == "hard_prune")
    if expect == "none":
        assert "recovery" not in cut
    else:
        assert cut["recovery"]["ranked_groups"] == 0 and cut["recovery"]["refitted_layers"] > 10


def test_a_layer_too_wide_for_its_normal_equations_is_skipped_with_the_reason(zoo_path, monkeypatch):
    from acc.passes.mask import masked_model
    from acc.passes.oneshot import ratio_plan
    from acc.prune.posttrain import refit as refit_module

    model = import_model(zoo_path("residual"))
    analysis = analyze(model)
    plan = ratio_plan(analysis, 0.5)
    monkeypatch.setattr(refit_module, "MAX_UNKNOWNS", 20)
    layers = refit_module.layers_to_refit(analysis, plan, TorchModel(masked_model(analysis, plan)), TorchModel(model))
    wide = [layer for layer in layers if layer.kind in ("conv", "linear") and "unknowns per output" in (layer.skip or "")]
    assert wide and all("GiB" in layer.skip for layer in wide)
