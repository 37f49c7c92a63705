"""Parameters and FLOPs as a function of per-group pruning rates, without rewriting the graph.

Each parameter initializer is a product of its axes; an axis whose positions follow channel groups
keeps the positions of the channels kept. Channel counts follow the same rounding as the plans
(`kept_channels`), so the estimate matches the rewritten graph up to channels that a group shares
unevenly across an axis (a Slice of part of a group); the search uses it to meet targets, and every
reported figure is counted on the real rewritten graph.
"""

from __future__ import annotations

import numpy as np

from acc.passes.analysis import Analysis
from acc.passes.channels import WEIGHT_ROLES
from acc.passes.counting import count, parameter_names


def kept_channels(width: int, prunable: int, rate: float) -> int:
    """Channels a group keeps at `rate`: at least one, never fewer than its frozen ones."""
    removed = min(int(round(rate * width)), prunable, width - 1)
    return width - max(removed, 0)


class CostModel:
    def __init__(self, analysis: Analysis):
        self.groups = analysis.prunable_groups
        self.names = [g.name for g in self.groups]
        self.widths = np.array([g.width for g in self.groups])
        self.prunable = np.array([len(g.prunable) for g in self.groups])
        index = {g.name: i for i, g in enumerate(self.groups)}
        find = analysis.elements.find
        root_group = {}
        for g in self.groups:
            for root in analysis.channel_of_root(g):
                root_group[root] = index[g.name]
        counts = count(analysis.model, analysis.index)
        self.params_total = counts.params
        self.flops_total = counts.flops
        params = set(parameter_names(analysis.index))
        # initializer -> list of (positions per group [G], positions) per axis it is sliced on
        axes: dict[str, dict[int, tuple[np.ndarray, int]]] = {}
        for m in analysis.members:
            per_group = np.zeros(len(self.groups))
            for e in m.layout.tolist():
                gi = root_group.get(find(e)) if e >= 0 else None
                if gi is not None:
                    per_group[gi] += 1
            axes.setdefault(m.initializer, {})[m.axis] = (per_group, len(m.layout))
        self.param_terms = [(analysis.index.array(n).size, axes.get(n, {})) for n in params]
        weight_of = {}
        for m in analysis.members:
            if m.role in WEIGHT_ROLES:
                weight_of.setdefault(m.node, m.initializer)
        self.flop_terms = [(f, axes.get(weight_of.get(node), {})) for node, f in counts.node_flops.items() if f]

    def keep_fractions(self, rates: np.ndarray) -> np.ndarray:
        kept = np.array([kept_channels(w, p, r) for w, p, r in zip(self.widths, self.prunable, rates)])
        return kept / self.widths

    @staticmethod
    def _sum(terms, frac) -> float:
        total = 0.0
        for size, axes in terms:
            value = float(size)
            for per_group, n in axes.values():
                value *= (n - per_group.sum() + per_group @ frac) / n
            total += value
        return total

    def params(self, rates: np.ndarray) -> float:
        return self._sum(self.param_terms, self.keep_fractions(rates))

    def flops(self, rates: np.ndarray) -> float:
        return self._sum(self.flop_terms, self.keep_fractions(rates))

    def measure(self, rates: np.ndarray, metric: str) -> float:
        return self.params(rates) if metric == "params" else self.flops(rates)

    def total(self, metric: str) -> float:
        return float(self.params_total if metric == "params" else self.flops_total)
