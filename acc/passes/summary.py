"""What the analysis found, as plain data: groups with the parameters and FLOPs they hold,
boundaries with their reasons, and totals. Used by `acc analyze` and the reports."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from acc.passes.analysis import Analysis
from acc.passes.channels import WEIGHT_ROLES
from acc.passes.counting import count, parameter_names


def group_holdings(analysis: Analysis) -> dict[str, tuple[int, int]]:
    """group name -> (parameters, FLOPs) that sit on its channels (shared weights count in both groups)."""
    counts = count(analysis.model, analysis.index)
    params = set(parameter_names(analysis.index))
    find = analysis.elements.find
    result = {}
    for g in analysis.groups:
        roots = set(analysis.channel_of_root(g))
        p = f = 0.0
        for mi in g.members:
            m = analysis.members[mi]
            positions = np.array([e >= 0 and find(e) in roots for e in m.layout.tolist()])
            share = positions.mean() if len(positions) else 0.0
            if m.initializer in params:
                p += share * analysis.index.array(m.initializer).size
            if m.role in WEIGHT_ROLES:
                f += share * counts.node_flops.get(m.node, 0)
        result[g.name] = (int(round(p)), int(round(f)))
    return result


def describe(analysis: Analysis) -> dict:
    counts = count(analysis.model, analysis.index)
    holdings = group_holdings(analysis)
    groups = []
    for g in analysis.groups:
        members = OrderedDict()
        for mi in g.members:
            m = analysis.members[mi]
            members.setdefault(f"{m.initializer}[axis {m.axis}]", m.role)
        frozen_reasons = sorted({r for r in g.frozen if r})
        groups.append(
            {
                "name": g.name,
                "width": g.width,
                "unit": g.unit,
                "prunable": len(g.prunable),
                "producers": g.producers,
                "members": [{"tensor": k, "role": v} for k, v in members.items()],
                "params": holdings[g.name][0],
                "flops": holdings[g.name][1],
                "frozen_reasons": frozen_reasons,
            }
        )
    seen, boundaries = set(), []
    for b in analysis.boundaries:
        if (b.where, b.reason) not in seen:
            seen.add((b.where, b.reason))
            boundaries.append({"where": b.where, "reason": b.reason})
    return {
        "totals": {
            "nodes": len(analysis.model.graph.node),
            "params": counts.params,
            "nonzero_params": counts.nonzero_params,
            "flops": counts.flops,
            "groups": len(analysis.groups),
            "prunable_groups": len(analysis.prunable_groups),
            "boundaries": len(boundaries),
        },
        "groups": groups,
        "boundaries": boundaries,
    }
