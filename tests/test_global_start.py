"""The annealing's start: uniform rates or a peer's global allocation (acc.prune.global_importance),
whichever has the lower energy."""

from __future__ import annotations

import numpy as np
import pytest

from acc.passes.analysis import analyze
from acc.passes.importer import import_model
from acc.prune.global_importance import channel_importance, global_allocation
from acc.prune.search import Annealer, Guidance, SearchConfig, cost_model


@pytest.fixture(scope="module")
def resnet(model_path):
    return analyze(import_model(model_path("resnet20")))


@pytest.mark.parametrize("importance", ["l1", "bn"])
@pytest.mark.parametrize("metric, target", [("params", 2.0), ("params", 6.0), ("flops", 3.0), ("nonzero", 2.0)])
def test_global_allocation_meets_the_target_within_the_caps(resnet, importance, metric, target):
    cost = cost_model(resnet, metric)
    guidance = Guidance(resnet, cost, SearchConfig(mild_rate=0.3))
    goal = cost.total(metric) / target
    caps = guidance.caps(goal, metric)
    rates = global_allocation(resnet, cost, goal, metric, importance, caps)
    assert rates is not None and len(rates) == cost.size
    assert cost.measure(rates, metric) <= goal
    assert np.all(rates <= caps + 1e-9)
    assert np.all(rates[len(cost.names):] == 0)  # peers have no column scheme
    # The fewest channels: one channel fewer removed would miss the target.
    kept = cost.kept_counts(rates)
    assert len(set(np.round(rates[:len(cost.names)], 6))) > 1  # not uniform: the ranking is global
    assert cost.measure(rates, metric) > 0.97 * goal or kept.sum() == cost.widths.sum()


def test_importance_is_normalised_within_each_group(resnet):
    for importance in ("l1", "bn"):
        scores = channel_importance(resnet, importance)
        assert set(scores) == {g.name for g in resnet.prunable_groups}  # every group of ResNet-20 has a BatchNorm
        assert all(v.mean() == pytest.approx(1.0) for v in scores.values())


def test_out_of_reach_within_the_caps_is_none(resnet):
    cost = cost_model(resnet, "params")
    caps = np.full(len(cost.names), 0.2)
    assert global_allocation(resnet, cost, cost.total("params") / 3, "params", "l1", caps) is None


class KindScorer:
    """Energy by the start the rates are: a fixed energy per named start, `other` for anything else."""

    def __init__(self, starts: dict, energies: dict, other: float):
        self.starts = {k: tuple(np.round(v, 6)) for k, v in starts.items() if v is not None}
        self.by_start, self.other, self.scored = energies, other, []

    def keep_counts(self, rates):
        return tuple(np.round(np.asarray(rates), 6))

    def energy(self, rates, seed_offset=0):
        key = self.keep_counts(rates)
        self.scored.append(key)
        return next((self.by_start[k] for k, v in self.starts.items() if v == key), self.other)


def annealed(resnet, energies: dict, other: float):
    """An annealing to half the parameters whose energies are `energies` per start, `other` elsewhere:
    (annealer, its scorer, the starts, the best rates)."""
    cost = cost_model(resnet, "params")
    config = SearchConfig(cooling=0.5, seed=2)
    guidance = Guidance(resnet, cost, config)
    goal = cost.total("params") / 2
    starts = guidance.starts(goal, "params")
    scorer = KindScorer(starts, energies, other)
    annealer = Annealer(guidance, scorer, goal, "params", config)
    return annealer, scorer, starts, annealer.run()


@pytest.mark.parametrize("energies, chosen", [({"uniform": 10.0, "l1": 5.0, "bn": 7.0}, "l1"),
                                              ({"uniform": 4.0, "l1": 5.0, "bn": 7.0}, "uniform"),
                                              ({"uniform": 10.0, "l1": 8.0, "bn": 6.0}, "bn")])
def test_the_lower_energy_start_is_where_the_annealing_starts(resnet, energies, chosen):
    annealer, scorer, starts, best = annealed(resnet, energies, other=100.0)  # every proposal is worse
    st = annealer.state
    assert st.start_kind == chosen and st.start == starts[chosen].tolist()
    assert st.start_energies == energies
    assert st.trace[0]["start"] == chosen and st.trace[0]["energy"] == energies[chosen]
    assert best.tolist() == starts[chosen].tolist()
    assert len(scorer.scored) > 3  # the annealing moved on from the start


def test_a_start_whose_scoring_blew_up_is_never_chosen(resnet):
    """A NaN energy (a candidate's fine-tuning diverged) counts as infinite: np.argmin alone would pick it."""
    annealer, _, starts, best = annealed(resnet, {"uniform": float("nan"), "l1": 8.0, "bn": 6.0}, other=float("nan"))
    st = annealer.state
    assert st.start_kind == "bn" and st.start_energies["uniform"] == float("inf")
    assert best.tolist() == starts["bn"].tolist() and st.best_energy == 6.0  # no NaN proposal was taken


def test_proposals_keep_the_shape_of_a_global_start(resnet):
    """Around a global allocation the experience rule's sorting is not applied (it would undo it)."""
    cost = cost_model(resnet, "params")
    config = SearchConfig(cooling=0.5, seed=2)
    guidance = Guidance(resnet, cost, config)
    goal = cost.total("params") / 2
    starts = guidance.starts(goal, "params")
    annealer = Annealer(guidance, KindScorer(starts, {"uniform": 9.0, "l1": 1.0, "bn": 9.0}, 100.0), goal, "params", config)
    annealer.run()
    annealer.state.temperature = 1e-6  # no noise: a proposal is the start rescaled
    proposal = annealer.propose(np.array(annealer.state.start))
    assert cost.measure(proposal, "params") <= goal * 1.001
    assert not np.allclose(proposal, guidance.order(proposal))  # unsorted, like the start
    assert np.corrcoef(proposal[:len(cost.names)], starts["l1"][:len(cost.names)])[0, 1] > 0.95


@pytest.mark.parametrize("starts", ["uniform,l2", "", "l1,l1"])
def test_bad_search_starts_are_a_one_line_error(tmp_path, capsys, model_path, starts):
    from acc.cli import main

    out = tmp_path / "o"
    code = main(["compile", str(model_path("resnet20")), "--rate", "2x", "--data", str(tmp_path), "-o", str(out),
                 "--search-starts", starts])
    err = capsys.readouterr().err
    assert code == 2 and "--search-starts" in err and len(err.strip().splitlines()) == 1 and not out.exists()
