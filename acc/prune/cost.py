"""Parameters and FLOPs as a function of per-group pruning rates, without rewriting the graph.

A rate vector holds one filter rate per prunable channel group and, when the cost model is built
with `columns`, one column rate per column layer after them. Column pruning zeroes weights without
changing shapes, so it counts only for the "nonzero" metric (non-zero parameters, the paper's
count); "params" (dense parameters) and "flops" read the group rates alone.

Each parameter initializer is a product of its axes; an axis whose positions follow channel groups
keeps the positions of the channels kept. Channel counts follow the same rounding as the plans
(`kept_channels`), so the estimate matches the rewritten graph up to channels that a group shares
unevenly across an axis (a Slice of part of a group); the search uses it to meet targets, and every
reported figure is counted on the real rewritten graph.

`round_to` K (`--round-to`): a group wider than K keeps a multiple of K channels (fast kernels on
NEON/GPU work in blocks of 4, 8, 16 channels), the multiple nearest to what the rate keeps, at
least K, or its whole width when that is nearer (a width that is no multiple of K ends at a
multiple of K or whole); a group no wider than K stays whole. The cost model counts these widths,
so the search's rescaling meets the target with them.
"""

from __future__ import annotations

import numpy as np

from acc.passes.analysis import Analysis
from acc.passes.channels import WEIGHT_ROLES
from acc.passes.counting import count, parameter_names
from acc.prune.nonzero import column_counters


def kept_channels(width: int, prunable: int, rate: float, round_to: int = 1) -> int:
    """Channels a group keeps at `rate`: its frozen ones and at least one prunable one; with
    `round_to` K a multiple of K (or the whole width, see the module docstring). One prunable
    channel stays because a group's frozen channels need not come from every producer: in a
    zero-padded shortcut (CIFAR ResNet option A) the padding is frozen, and removing every
    prunable channel would leave the conv that feeds the shortcut with no output at all."""
    removed = min(int(round(rate * width)), prunable - 1)
    kept = width - max(removed, 0)
    if round_to <= 1 or kept == width:
        return kept
    if width <= round_to:
        return width
    floor_kept = width - prunable + 1  # frozen channels and one prunable one stay
    options = [m for m in range(round_to, width + 1, round_to) if m >= floor_kept] + [width]
    return min(options, key=lambda m: (abs(m - kept), -m))  # nearest; a tie keeps more


METRICS = ("params", "flops", "nonzero", "latency")


def _output_axes(analysis: Analysis, node, root_group: dict, groups: int) -> dict:
    """A weightless MatMul (attention's q@k^T and p@v): its MACs follow the channels its output
    carries (whole heads), as a weighted node's follow its weight's axes."""
    info = analysis.tensor_channels.get(node.output[0]) if node.output else None
    if info is None:
        return {}
    find = analysis.elements.find
    per_group = np.zeros(groups)
    for e in info.layout.tolist():
        gi = root_group.get(find(e)) if e >= 0 else None
        if gi is not None:
            per_group[gi] += 1
    return {info.axis: (per_group, len(info.layout))} if per_group.any() else {}


class CostModel:
    def __init__(self, analysis: Analysis, columns: dict[str, str] | None = None, round_to: int = 1,
                 latency=None):
        """`columns`: column layer (node name) -> its weight initializer, searched after the groups;
        `round_to`: kept channel counts are multiples of it (see kept_channels); `latency`: an
        acc.prune.latency_cost.LatencyModel of this graph, for the "latency" metric (milliseconds)."""
        self.round_to = int(round_to)
        self.latency_model = latency
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
        self.column_weights = dict(columns or {})  # column layer -> its weight initializer
        self.column_names = list(self.column_weights)
        column_of = {init: i for i, init in enumerate(self.column_weights.values())}
        # Per parameter term: which column rate thins it (-1: none); a weight is shared by one layer.
        self.param_columns = np.array([column_of.get(n, -1) for n in params])
        # Zero columns of an earlier round stay zero: a column rate thins what is still non-zero.
        # Exact counters where the weight's axes each follow one group, else the average density.
        self.column_density = np.array([np.count_nonzero(a) / max(a.size, 1) for a in
                                        (analysis.index.array(init) for init in self.column_weights.values())])
        self.column_counters = column_counters(analysis, list(self.column_weights.values()), index)
        self.nonzero_total = counts.nonzero_params
        weight_of = {}
        for m in analysis.members:
            if m.role in WEIGHT_ROLES:
                weight_of.setdefault(m.node, m.initializer)
        nodes = {n.name: n for n in analysis.index.graph.node}
        self.flop_terms = [(f, axes.get(weight_of[node], {}) if node in weight_of
                            else _output_axes(analysis, nodes[node], root_group, len(self.groups)))
                           for node, f in counts.node_flops.items() if f]

    @property
    def size(self) -> int:
        """Length of a rate vector: groups, then column layers."""
        return len(self.names) + len(self.column_names)

    def split(self, rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rates = np.asarray(rates, dtype=float)
        g = len(self.names)
        columns = rates[g:] if len(rates) > g else np.zeros(len(self.column_names))
        return rates[:g], columns

    def kept_counts(self, rates: np.ndarray) -> np.ndarray:
        """Channels each group keeps at the vector's filter rates."""
        group_rates, _ = self.split(rates)
        return np.array([kept_channels(w, p, r, self.round_to) for w, p, r in zip(self.widths, self.prunable, group_rates)])

    def keep_fractions(self, rates: np.ndarray) -> np.ndarray:
        return self.kept_counts(rates) / self.widths

    @staticmethod
    def _terms(terms, frac) -> np.ndarray:
        values = np.empty(len(terms))
        for i, (size, axes) in enumerate(terms):
            value = float(size)
            for per_group, n in axes.values():
                value *= (n - per_group.sum() + per_group @ frac) / n
            values[i] = value
        return values

    def params(self, rates: np.ndarray) -> float:
        return float(self._terms(self.param_terms, self.keep_fractions(rates)).sum())

    def nonzero(self, rates: np.ndarray) -> float:
        """Dense parameters after filter pruning; each column layer's weight counted by the non-zeros
        its kept channels hold now (see acc.prune.nonzero), times (1 - its column rate)."""
        kept = self.kept_counts(rates)
        dense = self._terms(self.param_terms, kept / self.widths)
        _, column_rates = self.split(rates)
        for term, layer in enumerate(self.param_columns):
            if layer >= 0:
                counter = self.column_counters[layer]
                if counter:
                    dense[term] = counter.kept(kept, column_rates[layer])
                else:
                    dense[term] *= self.column_density[layer] * (1.0 - column_rates[layer])
        return float(dense.sum())

    def flops(self, rates: np.ndarray) -> float:
        return float(self._terms(self.flop_terms, self.keep_fractions(rates)).sum())

    def latency(self, rates: np.ndarray) -> float:
        """Predicted milliseconds on the engine the latency model was measured on."""
        if self.latency_model is None:
            raise ValueError("the latency metric needs a cost model built with a latency model")
        return self.latency_model.predict(self.keep_fractions(rates))

    def measure(self, rates: np.ndarray, metric: str) -> float:
        return {"params": self.params, "flops": self.flops, "nonzero": self.nonzero, "latency": self.latency}[metric](rates)

    def total(self, metric: str) -> float:
        """The model's own count: dense or non-zero parameters, FLOPs, or its measured milliseconds."""
        if metric == "latency":
            if self.latency_model is None:
                raise ValueError("the latency metric needs a cost model built with a latency model")
            return float(self.latency_model.total())
        return float({"params": self.params_total, "flops": self.flops_total, "nonzero": self.nonzero_total}[metric])
