"""Per-group rates for a post-training target, chosen by the search's own machinery.

Two starts, both meeting the target: uniform rates (Guidance.uniform) and a global-importance
allocation, Torch-Pruning's global pruning on ONNX groups, the same one the search starts from
(acc.prune.global_importance: L1 norms over the group mean, lowest removed first until the target,
the experience caps respected). The start with the lower energy
(the zero-training energy of recover.CalibratedScorer) seeds the annealing (Guidance + Annealer,
acc/prune/search.py), whose proposals follow the experience rules as they are. The annealing's
energy is cheap (masks + BatchNorm); the finalists (the two starts and the annealing's best) are
scored again after the full recovery (refit included), and the lowest wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from acc.passes.analysis import Analysis
from acc.prune.cost import CostModel
from acc.prune.global_importance import global_allocation
from acc.prune.search import Annealer, Guidance, SearchConfig, keep_counts


def global_rates(analysis: Analysis, cost: CostModel, guidance: Guidance, target: float, metric: str) -> np.ndarray:
    """The search's global L1 start (acc.prune.global_importance), capped as the guidance caps
    groups; uniform rates where the caps stop the global order short of the target."""
    rates = global_allocation(analysis, cost, target, metric, "l1", guidance.caps(target, metric))
    return guidance.uniform(target, metric) if rates is None else rates


@dataclass
class Allocation:
    rates: np.ndarray
    chosen: str  # uniform | global | search
    starts: dict = field(default_factory=dict)  # name -> one-shot energy
    finalists: list = field(default_factory=list)  # {name, energy (one-shot), recovered (after the refit)}
    search: dict = field(default_factory=dict)


def search_rates(analysis: Analysis, cost: CostModel, scorer, target: float, metric: str, config: SearchConfig,
                 recovered_energy, progress=None) -> Allocation:
    """Anneal from the better start; pick among the finalists by `recovered_energy(rates)`."""
    guidance = Guidance(analysis, cost, config)
    annealer = Annealer(guidance, scorer, target, metric, config, progress=progress)
    starts = {"uniform": guidance.uniform(target, metric), "global": global_rates(analysis, cost, guidance, target, metric)}
    energies = dict(zip(starts, annealer.score_batch(list(starts.values()))))
    first = min(energies, key=energies.get)
    st = annealer.state
    st.current, st.current_energy = starts[first].tolist(), energies[first]
    st.best, st.best_energy, st.start = list(st.current), st.current_energy, list(st.current)
    st.trace.append({"step": 0, "temperature": st.temperature, "energy": st.current_energy,
                     "candidate_energy": st.current_energy, "accepted": True, "best_energy": st.best_energy})
    best = annealer.run()
    finalists, seen = [], set()
    for name, rates in (("uniform", starts["uniform"]), ("global", starts["global"]), ("search", best)):
        key = keep_counts(cost, rates)
        if key in seen:
            continue
        seen.add(key)
        one_shot = annealer.score(rates)
        finalists.append({"name": name, "energy": one_shot, "recovered": recovered_energy(rates), "rates": rates})
    winner = min(finalists, key=lambda f: f["recovered"])
    return Allocation(
        rates=winner["rates"], chosen=winner["name"], starts=energies,
        finalists=[{k: v for k, v in f.items() if k != "rates"} for f in finalists],
        search={"steps": st.step, "evaluated": len(st.cache), "best_energy": st.best_energy,
                "started_from": first, "trace": st.trace})
