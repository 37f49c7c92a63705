"""Non-zero entries a column layer's weight keeps, as a function of its groups' kept channel counts.

After a round of column pruning the zeros of a weight are not spread evenly: a channel whose
columns were pruned has a small norm, so filter pruning in the next round removes it first and
the weight left behind is denser than its average. Counting with the average density
overestimated the reduction by 3 to 4 % on ResNet-20 at 8x non-zero. Here the channels of each
group are ranked by the same norm the projection uses (squared weights summed over every weight
member; frozen channels first), the weight's non-zeros are summed per (row, column) channel pair
in that order, and the count for any pair of kept-channel counts is one lookup in a 2-D prefix sum.
A weight whose axis mixes channels of several groups (a Concat read by one conv) falls back to the
average density.
"""

from __future__ import annotations

import numpy as np

from acc.passes.analysis import Analysis
from acc.passes.channels import IN_WEIGHT, WEIGHT_ROLES
from acc.passes.oneshot import channel_norms


def channel_ranks(analysis: Analysis) -> dict[str, np.ndarray]:
    """Group name -> rank of each channel (0 = kept first): frozen channels, then by L2 norm."""
    ranks = {}
    for name, norms in channel_norms(analysis, "l2").items():
        g = analysis.group(name)
        scores = norms.copy()
        scores[[why is not None for why in g.frozen]] = np.inf
        order = np.argsort(-scores, kind="stable")
        rank = np.empty(g.width, dtype=np.int64)
        rank[order] = np.arange(g.width)
        ranks[name] = rank
    return ranks


class WeightNonzeros:
    """Kept non-zeros of one weight for kept channel counts of the (up to two) groups on its axes."""

    def __init__(self, prefix: np.ndarray, axes: list[tuple[int | None, np.ndarray]], in_axis: int | None,
                 live_prefix: np.ndarray | None):
        self.prefix = prefix  # [rows + 1, cols + 1] 2-D prefix sum of non-zeros, rows/cols in rank order
        self.axes = axes  # per matrix axis: (group index or None, kept positions for k kept channels)
        self.in_axis = in_axis  # which matrix axis holds input channels (columns), if known
        self.live_prefix = live_prefix  # prefix over that axis: columns not all zero, per input position

    def kept(self, kept_counts: np.ndarray, column_rate: float = 0.0) -> float:
        """Non-zeros left when the groups keep `kept_counts` channels, then `column_rate` of the live
        columns goes the way ColumnConstraint rounds it."""
        idx = [upto[kept_counts[g]] if g is not None else upto[-1] for g, upto in self.axes]
        nonzeros = float(self.prefix[idx[0], idx[1]])
        if column_rate <= 0:
            return nonzeros
        if self.in_axis is None:
            return nonzeros * (1.0 - column_rate)
        live = int(self.live_prefix[idx[self.in_axis]])
        if live == 0:
            return 0.0
        keep = max(1, live - round(column_rate * live))
        return nonzeros * keep / live


def column_counters(analysis: Analysis, initializers: list[str], group_index: dict[str, int]) -> list[WeightNonzeros | None]:
    """One exact counter per weight (None where an axis mixes groups), sharing one channel ranking."""
    if not initializers:
        return []
    ranks = channel_ranks(analysis)
    root_owner = {root: (g.name, ch) for g in analysis.prunable_groups for root, ch in analysis.channel_of_root(g).items()}
    return [_weight_nonzeros(analysis, init, group_index, ranks, root_owner) for init in initializers]


def _weight_nonzeros(analysis: Analysis, initializer: str, group_index: dict[str, int],
                     ranks: dict[str, np.ndarray], root_owner: dict[int, tuple[str, int]]) -> WeightNonzeros | None:
    find = analysis.elements.find
    arr = np.asarray(analysis.index.array(initializer))
    members = [m for m in analysis.members if m.initializer == initializer and m.role in WEIGHT_ROLES]
    member_axes = sorted({m.axis for m in members})
    if arr.ndim < 2 or not 1 <= len(member_axes) <= 2:
        return None
    axes, orders = [], []
    for axis in member_axes:
        m = next(m for m in members if m.axis == axis)
        owners = [root_owner.get(find(e)) if e >= 0 else None for e in m.layout.tolist()]
        names = {o[0] for o in owners if o is not None}
        if len(names) > 1:
            return None
        name = names.pop() if names else None
        # Positions outside any prunable group are always kept: they sort first.
        key = np.array([-1 if o is None else ranks[o[0]][o[1]] for o in owners])
        order = np.argsort(key, kind="stable")
        width = len(ranks[name]) if name else 0
        upto = np.array([int(np.sum(key < k)) for k in range(width + 1)] if name else [len(key)])
        axes.append((group_index[name] if name else None, upto))
        orders.append(order)
    nonzero = np.asarray(arr) != 0
    in_axes = [i for i, axis in enumerate(member_axes) if any(m.axis == axis and m.role == IN_WEIGHT for m in members)]
    in_axis, live_prefix = None, None
    if len(in_axes) == 1:
        in_axis = in_axes[0]
        out_axes = [a for a in member_axes if a != member_axes[in_axis]]
        # A column is one (input position, kernel position) across all rows: live if any row is non-zero.
        any_row = nonzero.any(axis=out_axes[0]) if out_axes else nonzero
        in_pos = member_axes[in_axis] - (1 if out_axes and out_axes[0] < member_axes[in_axis] else 0)
        live = np.moveaxis(any_row, in_pos, 0).reshape(any_row.shape[in_pos], -1).sum(1)
        live_prefix = np.concatenate([[0], live[orders[in_axis]].cumsum()])
    counts = nonzero.astype(np.int64)
    if len(member_axes) == 1:
        counts = np.moveaxis(counts, member_axes[0], 0).reshape(arr.shape[member_axes[0]], 1, -1).sum(2)
        axes.append((None, np.array([1])))
        orders.append(np.array([0]))
    else:
        a, b = member_axes
        counts = np.moveaxis(counts, (a, b), (0, 1)).reshape(arr.shape[a], arr.shape[b], -1).sum(2)
    counts = counts[orders[0]][:, orders[1]]
    prefix = np.zeros((counts.shape[0] + 1, counts.shape[1] + 1), dtype=np.int64)
    prefix[1:, 1:] = counts.cumsum(0).cumsum(1)
    return WeightNonzeros(prefix, axes, in_axis, live_prefix)
