"""The shrink stage: import, analyse, plan (dead channels or a ratio), rewrite, verify.

Nothing is returned that has not passed verification: lossless purification is compared with the
model as loaded; ratio pruning with the masked model (same graph, removed channels zeroed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import onnx

from acc.passes.analysis import Analysis, analyze
from acc.passes.counting import Counts, count
from acc.passes.importer import normalize
from acc.passes.load import load_model
from acc.passes.mask import masked_model
from acc.passes.oneshot import check_ratio, ratio_plan
from acc.passes.plan import Plan
from acc.passes.purify import purify
from acc.passes.rewrite import rewrite
from acc.passes.verify import OutputDiff, verify_equal


@dataclass
class ShrinkResult:
    model: onnx.ModelProto
    mode: str  # "purify" or "ratio"
    before: Counts
    after: Counts
    plan: Plan
    analysis: Analysis
    diffs: list[OutputDiff] = field(default_factory=list)

    def group_rows(self) -> list[dict]:
        rows = []
        for g in self.analysis.groups:
            kept = self.plan.keep.get(g.name, list(range(g.width)))
            rows.append(
                {
                    "group": g.name,
                    "width_before": g.width,
                    "width_after": len(kept),
                    "prunable": len(g.prunable),
                    "kept": [int(k) for k in kept],
                }
            )
        return rows

    def report(self) -> dict:
        return {
            "mode": self.mode,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "groups": self.group_rows(),
            "boundaries": [{"where": b.where, "reason": b.reason} for b in self.analysis.boundaries],
            "verification": [
                {"output": d.name, "max_abs_error": d.max_abs_error, "max_abs_output": d.max_abs_output}
                for d in self.diffs
            ],
        }


def shrink(
    source: str | os.PathLike | onnx.ModelProto,
    ratio: float | None = None,
    criterion: str = "l1",
    input_shapes: dict | None = None,
) -> ShrinkResult:
    original = source if isinstance(source, onnx.ModelProto) else load_model(source)
    if ratio is not None:
        check_ratio(ratio)
    model = normalize(original, input_shapes)
    analysis = analyze(model)
    before = count(model, analysis.index)
    if ratio is None:
        purified = purify(model)
        out, plan, reference = purified.model, purified.plan, original
        what = "purified model"
    else:
        plan = ratio_plan(analysis, ratio, criterion)
        out, reference = rewrite(analysis, plan), masked_model(analysis, plan)
        what = "shrunk model"
    diffs = verify_equal(reference, out, what=what)
    return ShrinkResult(out, "purify" if ratio is None else "ratio", before, count(out), plan, analysis, diffs)
