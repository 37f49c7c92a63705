"""One-shot structured pruning: drop a fraction of every prunable group, smallest norm first.

A channel's norm is summed over all of its group's weights (the rows that write it, the columns
that read it, depthwise rows), so a channel that is cheap everywhere goes first.
"""

from __future__ import annotations

import numpy as np

from acc.errors import InputError
from acc.passes.analysis import Analysis
from acc.passes.channels import WEIGHT_ROLES
from acc.passes.plan import Plan

CRITERIA = ("l1", "l2")


def channel_norms(analysis: Analysis, criterion: str = "l1") -> dict[str, np.ndarray]:
    if criterion not in CRITERIA:
        raise InputError(f"unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    find = analysis.elements.find
    norms: dict[str, np.ndarray] = {}
    for group in analysis.prunable_groups:
        root_of = analysis.channel_of_root(group)
        total = np.zeros(group.width)
        for mi in group.members:
            m = analysis.members[mi]
            if m.role not in WEIGHT_ROLES:
                continue
            w = analysis.index.array(m.initializer).astype(np.float64)
            rows = np.moveaxis(w, m.axis, 0).reshape(w.shape[m.axis], -1)
            per_pos = np.abs(rows).sum(1) if criterion == "l1" else (rows**2).sum(1)
            for p, e in enumerate(m.layout.tolist()):
                j = root_of.get(find(e)) if e >= 0 else None
                if j is not None:
                    total[j] += per_pos[p]
        norms[group.name] = total if criterion == "l1" else np.sqrt(total)
    return norms


def check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise InputError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")


def ratio_plan(analysis: Analysis, ratio: float, criterion: str = "l1", round_to: int = 1) -> Plan:
    """`ratio` of every group removed; with `round_to` K each group keeps a multiple of K channels
    (acc.prune.cost.kept_channels, the rule of acc prune and acc compile)."""
    from acc.prune.cost import kept_channels  # here: acc.prune.nonzero imports this module

    check_ratio(ratio)
    return kept_plan(analysis, {g.name: kept_channels(g.width, len(g.prunable), ratio, round_to)
                                for g in analysis.prunable_groups}, criterion)


def kept_plan(analysis: Analysis, kept: dict[str, int], criterion: str = "l1") -> Plan:
    """Each group named in `kept` keeps that many channels: its lowest-`criterion` prunable ones go."""
    keep = {}
    for name, norm in channel_norms(analysis, criterion).items():
        group = analysis.group(name)
        n_remove = group.width - kept.get(name, group.width)
        if n_remove <= 0:
            continue
        # Stable order: ties broken by index, so the same model gives the same plan.
        order = sorted(group.prunable, key=lambda j: (norm[j], j))
        removed = set(order[:n_remove])
        keep[name] = [j for j in range(group.width) if j not in removed]
    return Plan(keep)
