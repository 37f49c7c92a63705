"""The search's cost: replayed batches give the energies drawn batches give, and the report says
what the search cost."""

from __future__ import annotations

import numpy as np
import pytest

from acc.autocompress import build_scorer, search_cost
from acc.passes.analysis import analyze
from acc.passes.importer import import_model
from acc.prune import search
from acc.prune.cost import CostModel
from acc.prune.pipeline import PruneOptions
from acc.prune.rates import Rates
from acc.prune.search import SearchConfig
from acc.report import search_cost_line

from test_prune import tiny  # noqa: F401 - the tiny CNN fixture
from test_search import DEMO


@pytest.mark.parametrize("labels", [False, True])
def test_replayed_batches_and_teacher_outputs_give_the_same_energies(tiny, monkeypatch, labels):  # noqa: F811
    model = import_model(tiny)
    analysis = analyze(model)
    cost = CostModel(analysis)
    options = PruneOptions(rates=Rates(), limit=160, progress=False)
    config = SearchConfig(eval_images=32, finetune_steps=4, finetune_batch=16, bn_batches=1)
    candidates = [np.full(len(cost.names), r) for r in (0.3, 0.5)]

    def energies():
        scorer = build_scorer(model, analysis, tiny, DEMO, options, config, labels, "cpu")
        return [scorer.energy(r, seed_offset=o) for o in (0, 1) for r in candidates], scorer

    replayed, scorer = energies()
    assert {what for what, _ in scorer._replay} == {"finetune", "calibration"}  # kept and replayed
    teacher_outputs = [outputs for (what, _), (_, outputs) in scorer._replay.items() if what == "finetune"]
    assert all(len(o) == 4 for o in teacher_outputs) if not labels else not any(teacher_outputs)  # distilled: kept
    monkeypatch.setattr(search, "REPLAY_BYTES", 0)
    drawn, scorer = energies()
    assert not scorer._replay
    assert replayed == drawn
    assert len(set(drawn)) == 4  # other rates, other seeds: other energies


def test_the_report_says_what_the_search_cost():
    rounds = [{"round": 1, "seconds": 100.0, "search": {"seconds": 20.0, "setup_seconds": 5.0, "evaluated": 9}},
              {"round": 2, "seconds": 50.0, "search": {"seconds": 15.0, "setup_seconds": 4.0, "evaluated": 8}}]
    cost = search_cost(rounds, 160.0)
    assert cost["seconds"] == 35.0 and cost["setup_seconds"] == 9.0 and cost["share"] == pytest.approx(35 / 160)
    assert [r["share"] for r in cost["per_round"]] == [0.2, 0.3]
    line = search_cost_line({"search_cost": cost})
    assert line == "search: 35 s of 160 s (22 % of the run; 9 s of it setting up the scorer); round 1 20 s (20 %), round 2 15 s (30 %)"


def _config(steps: int, finetune_steps: int, **kw) -> SearchConfig:
    import math

    c = SearchConfig(finetune_steps=finetune_steps, eval_images=256, **kw)
    c.cooling = math.exp(math.log(c.t_end / c.t_start) / steps)
    return c


def test_the_search_is_fitted_to_its_share_of_the_round():
    from acc.prune.search import annealing_steps, fit_budget

    # Plenty of training: nothing to cut.
    c = _config(6, 30)
    fitted, budget = fit_budget(c, 100_000, 4)
    assert fitted == c and not budget["cut"] and budget["planned_passes"] <= budget["allowed_passes"]
    # Some: fine-tune steps go first, the annealing keeps its steps.
    fitted, budget = fit_budget(_config(16, 50), 45_000, 4)
    assert 20 <= fitted.finetune_steps < 50 and annealing_steps(fitted) == 16
    assert budget["planned_passes"] <= budget["allowed_passes"] < budget["planned_passes_asked"]
    # Little: fine-tune steps down to the floor, then annealing steps.
    fitted, budget = fit_budget(_config(6, 30), 12_000, 4)
    assert fitted.finetune_steps == 20 and 1 <= annealing_steps(fitted) < 6
    assert budget["planned_passes"] <= budget["allowed_passes"]
    # Too little to fit even then: the confirmation re-scores with one seed, and the record says it is over.
    fitted, budget = fit_budget(_config(8, 50), 3_600, 4)
    assert (fitted.finetune_steps, annealing_steps(fitted), fitted.confirm_seeds) == (20, 1, 1)
    assert budget["planned_passes"] > budget["allowed_passes"]
    # The share asked for sets the cut; 0 turns it off.
    assert fit_budget(_config(6, 30, search_share=0.5), 12_000, 4)[0].finetune_steps == 30
    assert fit_budget(_config(6, 30, search_share=0.0), 100, 4)[0] == _config(6, 30, search_share=0.0)


def test_a_round_that_trains_a_smaller_model_leaves_the_search_less():
    from acc.prune.search import fit_budget, round_pass_cost, training_image_cost

    # A pruned model's step costs a fixed part plus its FLOPs share of the full one's; the teacher adds its forward.
    assert training_image_cost(1.0, teacher=False) == 1.0
    assert training_image_cost(0.27, teacher=False) == pytest.approx(0.46, abs=0.01)
    assert training_image_cost(0.27, teacher=True, device="cpu") == pytest.approx(0.57, abs=0.01)
    assert training_image_cost(0.27, teacher=True, device="cuda") > training_image_cost(0.27, teacher=True, device="cpu")
    assert training_image_cost(0.9, teacher=True, device="cuda") == 1.0
    # Candidates train the same pruned model with the teacher's outputs replayed: the round's image costs more.
    assert round_pass_cost(0.27, teacher=False) == 1.0
    assert round_pass_cost(0.27, teacher=True, device="cpu") == pytest.approx(0.57 / 0.46, abs=0.02)
    full, _ = fit_budget(_config(16, 50), 45_000, 4)
    small, budget = fit_budget(_config(16, 50), 45_000, 4, pass_cost=0.5)
    assert small.finetune_steps < full.finetune_steps and budget["pass_cost"] == 0.5
    assert budget["allowed_passes"] == pytest.approx(0.5 * fit_budget(_config(16, 50), 45_000, 4)[1]["allowed_passes"])


@pytest.mark.parametrize("share", ["1", "-0.1", "1.5"])
def test_a_search_share_outside_0_1_is_a_one_line_error(tiny, tmp_path, capsys, share):  # noqa: F811
    from acc.cli import main

    out = tmp_path / "o"
    code = main(["compile", str(tiny), "--rate", "2x", "--data", str(DEMO), "-o", str(out), "--search-share", share])
    err = capsys.readouterr().err
    assert code == 2 and "--search-share" in err and len(err.strip().splitlines()) == 1 and not out.exists()
