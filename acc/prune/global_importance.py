"""Global importance allocation: the peers' global pruning, as one rate per channel group.

Every prunable channel of every group is ranked by its importance divided by the mean importance
of its group (Torch-Pruning 1.6.1's `normalizer="mean"` for global pruning, so a group of large
weights does not shield all of its channels), and channels are removed lowest first until the
model's count under the metric (params, flops or nonzero, counted by acc.prune.cost.CostModel, so
`--round-to` widths are what is counted) meets the target. Two importances:

- "l1": the L1 norm summed over every weight that writes or reads the channel (the rows of its
  producers, the columns of its readers; acc.passes.oneshot.channel_norms), Torch-Pruning's
  GroupMagnitudeImportance(p=1) up to the per-group scale that the normalisation removes;
- "bn": |gamma| of the BatchNormalization that follows the channel, summed over the group's BNs
  (network slimming); a group without a BatchNormalization loses nothing under it.

A group never loses more than its cap (`caps`: a rate per group, e.g. the search's max_rate and
mild caps), nor its frozen channels, nor its last channel. Column rates (the nonzero metric's
column scheme) stay zero: the peers have none. Works on the ONNX initializers alone, so the
post-training shrink can use it without torch.
"""

from __future__ import annotations

import numpy as np

from acc.passes.analysis import Analysis
from acc.passes.channels import BN_SCALE
from acc.passes.oneshot import channel_norms
from acc.prune.cost import CostModel

IMPORTANCES = ("l1", "bn")


def bn_scales(analysis: Analysis) -> dict[str, np.ndarray]:
    """|gamma| per channel, summed over the BatchNormalizations of each group that has one."""
    find = analysis.elements.find
    out = {}
    for group in analysis.prunable_groups:
        root_of = analysis.channel_of_root(group)
        total, seen = np.zeros(group.width), False
        for mi in group.members:
            m = analysis.members[mi]
            if m.role != BN_SCALE:
                continue
            seen = True
            gamma = np.abs(analysis.index.array(m.initializer).astype(np.float64)).reshape(-1)
            for p, e in enumerate(m.layout.tolist()):
                j = root_of.get(find(e)) if e >= 0 else None
                if j is not None:
                    total[j] += gamma[p]
        if seen:
            out[group.name] = total
    return out


def channel_importance(analysis: Analysis, importance: str) -> dict[str, np.ndarray]:
    """Per group: each channel's importance divided by the group's mean (groups left out: none)."""
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    raw = channel_norms(analysis, "l1") if importance == "l1" else bn_scales(analysis)
    return {name: values / values.mean() if values.mean() > 0 else values for name, values in raw.items()}


def removal_order(analysis: Analysis, cost: CostModel, importance: str, caps: np.ndarray) -> list[int]:
    """Group indices (into cost.names) in the order their channels go, lowest normalised importance
    first; each group appears at most as many times as its cap allows it to lose."""
    scores = channel_importance(analysis, importance)
    candidates = []
    for gi, (name, width, cap) in enumerate(zip(cost.names, cost.widths, caps)):
        if name not in scores:
            continue
        group = analysis.group(name)
        limit = min(int(np.floor(cap * width + 1e-9)), len(group.prunable), int(width) - 1)
        prunable = sorted(group.prunable, key=lambda j: (scores[name][j], j))[:max(limit, 0)]
        candidates += [(float(scores[name][j]), name, j, gi) for j in prunable]
    candidates.sort()
    return [gi for *_, gi in candidates]


def global_allocation(analysis: Analysis, cost: CostModel, target: float, metric: str, importance: str = "l1",
                      caps: np.ndarray | None = None) -> np.ndarray | None:
    """The rate vector (cost.size long) that removes the fewest lowest-ranked channels for which
    cost.measure(rates, metric) <= target; None when even every allowed removal is not enough."""
    g = len(cost.names)
    caps = np.full(g, 0.95) if caps is None else np.asarray(caps, dtype=float)[:g]
    order = removal_order(analysis, cost, importance, caps)

    def rates_after(k: int) -> np.ndarray:
        removed = np.bincount(np.array(order[:k], dtype=int), minlength=g) if k else np.zeros(g)
        rates = np.zeros(cost.size)
        rates[:g] = removed / cost.widths
        return rates

    if not order or cost.measure(rates_after(len(order)), metric) > target:
        return None
    lo, hi = 0, len(order)  # the count is non-increasing in k: bisection on the channels removed
    while lo < hi:
        mid = (lo + hi) // 2
        if cost.measure(rates_after(mid), metric) <= target:
            hi = mid
        else:
            lo = mid + 1
    return rates_after(hi)
