"""`--round-to K`: kept channel counts are multiples of K, the target is still met, and the
physically smaller model ends at exactly those widths."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from acc import api
from acc.cli import main
from acc.passes.analysis import analyze
from acc.passes.importer import import_model
from acc.prune.cost import kept_channels
from acc.prune.purify import _candidates
from acc.prune.search import Guidance, SearchConfig, cost_model, to_rates

from test_prune import DEMO, FAST, tiny  # noqa: F401 - the tiny CNN fixture (widths 16, 32, 32)
from test_search import DEMO as DEMO_DIR


def allowed(width: int, kept: int, k: int) -> bool:
    return kept == width or (kept % k == 0 and kept >= k)


@pytest.mark.parametrize("width", [7, 16, 24, 48, 64, 100])
@pytest.mark.parametrize("k", [4, 8, 16])
def test_kept_channels_are_multiples_of_k_or_whole(width, k):
    for rate in np.linspace(0, 0.95, 40):
        kept = kept_channels(width, width, rate, k)
        assert allowed(width, kept, k)
        if width <= k:
            assert kept == width  # a group no wider than K stays whole
        assert abs(kept - kept_channels(width, width, rate)) <= k  # the nearest allowed width
    assert kept_channels(64, 64, 0.3, 1) == kept_channels(64, 64, 0.3)
    assert kept_channels(48, 10, 0.9, 16) == 48  # 38 frozen channels: no multiple of 16 below 48 keeps them


@pytest.fixture(scope="module")
def resnet(model_path):
    return analyze(import_model(model_path("resnet20")))


@pytest.mark.parametrize("k", [4, 8])
@pytest.mark.parametrize("metric, target", [("params", 2.0), ("params", 4.0), ("flops", 2.0)])
def test_rescaling_meets_the_target_with_rounded_widths(resnet, k, metric, target):
    cost = cost_model(resnet, metric, k)
    guidance = Guidance(resnet, cost, SearchConfig(round_to=k))
    goal = cost.total(metric) / target
    rng = np.random.default_rng(0)
    starts = guidance.starts(goal, metric)
    for rates in [rng.uniform(0.1, 0.9, cost.size) for _ in range(3)] + [starts["l1"], starts["bn"]]:
        rates = guidance.rescale(rates, goal, metric)
        kept = cost.kept_counts(rates)
        assert all(allowed(w, n, k) for w, n in zip(cost.widths, kept))
        assert cost.measure(rates, metric) <= goal
        assert cost.measure(rates, metric) >= 0.8 * goal  # not far past it either (uniform rates can be: one step of K)
        # The named rates the hard prune gets keep exactly the counted widths.
        named = to_rates(cost, rates).groups
        assert [kept_channels(w, p, named.get(n, 0.0)) for n, w, p in zip(cost.names, cost.widths, cost.prunable)] == kept.tolist()


class _Group:
    def __init__(self, name, norms):
        self.name, self.criterion = name, "l1"
        self.norms = torch.tensor(norms, dtype=torch.float64)
        self.frozen = torch.zeros(len(norms), dtype=torch.bool)

    def scores(self, tensors):
        return self.norms


def test_near_zero_candidates_come_in_blocks_of_k():
    class Trainer:
        tensors = {}

        class constraints:  # noqa: N801 - stands in for a ConstraintSet
            groups = [_Group("a", [1.0] * 8 + [0.001, 0.003, 0.005, 0.0]), _Group("b", [1.0] * 6 + [0.004, 0.002])]

    single = _candidates(Trainer, round_to=1)
    assert [(c[1].name, c[2]) for c in single] == [("a", [8]), ("b", [7]), ("a", [9]), ("b", [6]), ("a", [10])]
    blocks = _candidates(Trainer, round_to=2)
    assert [(c[1].name, c[2]) for c in blocks] == [("a", [8, 9]), ("b", [7, 6])]  # a's third one has no partner
    assert _candidates(Trainer, round_to=4) == []


def widths(path):
    return {g.name: g.width for g in analyze(import_model(path)).groups}


def test_prune_with_round_to_ends_at_multiples_of_k(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "p.onnx"
    result = api.prune(tiny, DEMO, output=out, uniform=0.4, round_to=8, **FAST)
    before, after = widths(tiny), widths(out)
    pruned = {n: w for n, w in after.items() if n in before and w < before[n]}
    assert pruned and all(w % 8 == 0 for w in pruned.values())
    # 0.4 of 32 is 12.8 channels: 19 kept, rounded to 16; 0.4 of 16 keeps 10 -> 8.
    assert sorted(set(pruned.values())) == [8, 16]
    assert all(g["kept_requested"] % 8 == 0 for g in result.report["groups"] if g["scheme_rate"] > 0)


def test_compile_with_round_to_meets_the_rate_at_multiples_of_k(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "c"
    code = main(["compile", str(tiny), "--rate", "2x", "--data", str(DEMO_DIR), "-o", str(out), "--rounds", "1",
                 "--budget-epochs", "2", "--search-steps", "2", "--eval-images", "64", "--limit", "160",
                 "--test-limit", "100", "--round-to", "8", "--search-finetune-steps", "5", "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["reduction_dense"] >= 2.0
    for w in report["widths"]:
        if w["after"] is not None and w["after"] < w["before"]:
            assert w["after"] % 8 == 0, w
    assert widths(out / "model.onnx") == {w["group"]: w["after"] for w in report["widths"] if w["after"] is not None}
    assert report["search"][0]["config"]["round_to"] == 8
    cost = report["search_cost"]
    assert 0 < cost["seconds"] < cost["run_seconds"] and 0 < cost["share"] < 1
    assert len(cost["per_round"]) == 1 and cost["per_round"][0]["setup_seconds"] <= cost["per_round"][0]["seconds"]


@pytest.mark.parametrize("k, message", [("0", "--round-to must be a whole number of channels, 1 or more"),
                                        ("-4", "--round-to must be"), ("33", "wider than the widest prunable")])
def test_bad_round_to_is_a_one_line_error(tiny, tmp_path, capsys, k, message):  # noqa: F811
    out = tmp_path / "o"
    code = main(["compile", str(tiny), "--rate", "2x", "--data", str(DEMO_DIR), "-o", str(out), "--round-to", k,
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    pruned = tmp_path / "p.onnx"
    code = main(["prune", str(tiny), "--data", str(DEMO), "-o", str(pruned), "--uniform", "0.5", "--round-to", k,
                 "--no-progress", "--limit", "64"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not pruned.exists() and not list(tmp_path.iterdir())


def test_shrink_ratio_with_round_to_keeps_multiples_of_k(model_path, tmp_path):
    out, report = tmp_path / "s.onnx", tmp_path / "s.json"
    assert main(["shrink", str(model_path("resnet20")), "-o", str(out), "--ratio", "0.3", "--round-to", "8",
                 "--report", str(report)]) == 0
    convs = {i.name: i.dims[0] for i in onnx.load(out).graph.initializer if len(i.dims) == 4}
    assert convs and all(c % 8 == 0 for c in convs.values())  # 16/32/64 wide: 0.3 alone keeps 11, 22, 45
    data = json.loads(report.read_text())
    assert {g["width_after"] for g in data["groups"] if g["width_after"] < g["width_before"]} == {8, 24, 48}
    assert all(v["max_abs_error"] <= 1e-3 * max(1.0, v["max_abs_output"]) for v in data["verification"])


@pytest.mark.parametrize("args, message", [(["--ratio", "0.3", "--round-to", "0"], "--round-to must be"),
                                           (["--ratio", "0.3", "--round-to", "65"], "wider than the widest prunable"),
                                           (["--round-to", "8"], "--round-to is read only with --ratio")])
def test_shrink_bad_round_to_is_a_one_line_error(model_path, tmp_path, capsys, args, message):
    out = tmp_path / "s.onnx"
    assert main(["shrink", str(model_path("resnet20")), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()
