"""Lossless purification: remove every provably dead channel, repeat until none is left.

Removing a dead filter can leave the channels it alone was reading unread, so the pass runs to a
fixed point. Each round is verified against the model it started from; the result is verified
against the original by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from acc.passes.analysis import Analysis, analyze
from acc.passes.dead_channels import dead_channels
from acc.passes.plan import Plan
from acc.passes.rewrite import rewrite

MAX_ROUNDS = 16


@dataclass
class PurifyResult:
    model: onnx.ModelProto
    plan: Plan = field(default_factory=Plan)  # kept channels, as indices into the input's groups
    rounds: int = 0


def dead_plan(analysis: Analysis) -> Plan:
    """Keep everything but the dead channels; a group keeps at least its first live-or-not channel."""
    keep = {}
    for name, dead in dead_channels(analysis).items():
        group = analysis.group(name)
        dead_set = set(dead)
        kept = [j for j in range(group.width) if j not in dead_set]
        keep[name] = kept or [min(dead)]
    return Plan(keep)


def purify(model: onnx.ModelProto) -> PurifyResult:
    result = PurifyResult(model)
    for _ in range(MAX_ROUNDS):
        analysis = analyze(result.model)
        plan = dead_plan(analysis)
        if plan.is_empty(analysis):
            break
        for name, kept in plan.keep.items():
            # Later rounds index the previous round's survivors: compose back to the input's indices.
            before = result.plan.keep.get(name)
            result.plan.keep[name] = [before[j] for j in kept] if before is not None else list(kept)
        result.model = rewrite(analysis, plan)
        result.rounds += 1
    return result
