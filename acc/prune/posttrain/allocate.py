"""Per-group rates for a post-training target, chosen by the search's own machinery.

Two starts, both meeting the target: uniform rates (Guidance.uniform) and a global-importance
allocation, Torch-Pruning's global pruning on ONNX groups: every channel's L1 norm (summed over
all weights that write or read it), divided by the mean of its group's norms so that groups of
different scales compare, and the channels under one global threshold removed, the threshold
bisected to meet the target (the experience caps respected). The start with the lower energy
(the zero-training energy of recover.CalibratedScorer) seeds the annealing (Guidance + Annealer,
acc/prune/search.py), whose proposals follow the experience rules as they are. The annealing's
energy is cheap (masks + BatchNorm); the finalists (the two starts and the annealing's best) are
scored again after the full recovery (refit included), and the lowest wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from acc.passes.analysis import Analysis
from acc.passes.oneshot import channel_norms
from acc.prune.cost import CostModel
from acc.prune.search import Annealer, Guidance, SearchConfig, keep_counts

BISECTION_STEPS = 50


def normalized_importance(analysis: Analysis, cost: CostModel) -> list[np.ndarray]:
    """Per prunable group (cost order): its channels' L1 norms over the group's mean; frozen channels inf."""
    norms = channel_norms(analysis, "l1")
    out = []
    for name in cost.names:
        group = analysis.group(name)
        n = norms[name].astype(np.float64)
        mean = n[group.prunable].mean() if group.prunable else 1.0
        scaled = n / mean if mean > 0 else np.zeros_like(n)
        scaled[[j for j in range(group.width) if group.frozen[j] is not None]] = np.inf
        out.append(scaled)
    return out


def global_rates(analysis: Analysis, cost: CostModel, guidance: Guidance, target: float, metric: str) -> np.ndarray:
    """Rates that remove every channel under one global normalised-importance threshold, capped
    per group as the guidance caps them, the threshold bisected to meet `target`."""
    importance = normalized_importance(analysis, cost)
    caps = guidance.caps(target, metric)

    def rates_at(threshold: float) -> np.ndarray:
        rates = np.zeros(cost.size)
        for i, scores in enumerate(importance):
            width = len(scores)
            removed = int((scores < threshold).sum())
            removed = min(removed, int(np.floor(caps[i] * width + 1e-9)), width - 1)
            rates[i] = removed / width
        return rates

    finite = np.concatenate([s[np.isfinite(s)] for s in importance]) if importance else np.zeros(0)
    lo, hi = 0.0, float(finite.max()) + 1.0 if len(finite) else 1.0
    if cost.measure(rates_at(hi), metric) > target:
        return guidance.uniform(target, metric)  # the caps stop the global order short of the target
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        if cost.measure(rates_at(mid), metric) > target:
            lo = mid
        else:
            hi = mid
    return rates_at(hi)


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
