"""The shrink stage: import, analyse, plan (dead channels or a ratio), rewrite, verify.

Nothing is returned that has not passed verification: lossless purification is compared with the
model as loaded; ratio pruning with the masked model (same graph, removed channels zeroed).

Lossless purification never returns more than it was given: its output drops the inferred shapes
of intermediate tensors (any consumer infers them again), and should it still hold more parameters
or more bytes than the input (an import that could not avoid growing it), the input itself is
returned, unchanged, and the result says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import onnx

from acc.errors import InputError
from acc.passes.analysis import Analysis, analyze
from acc.passes.counting import Counts, count
from acc.passes.importer import normalize
from acc.passes.load import load_model
from acc.passes.mask import masked_model
from acc.passes.normalize import ConstantsToInitializers
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
    bytes_before: int = 0
    bytes_after: int = 0
    unchanged: str | None = None  # why the input was returned as it was given (lossless mode)

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
            "bytes": {"before": self.bytes_before, "after": self.bytes_after},
            "unchanged": self.unchanged,
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
    prune_embedding: bool = False,
    round_to: int = 1,
) -> ShrinkResult:
    """`round_to` K (with `ratio`): every pruned group keeps a multiple of K channels."""
    original = source if isinstance(source, onnx.ModelProto) else load_model(source)
    if ratio is not None:
        check_ratio(ratio)
    elif round_to != 1:
        raise InputError("--round-to is read only with --ratio (lossless purification removes only dead channels)")
    model = normalize(original, input_shapes)
    analysis = analyze(model, prune_embedding=prune_embedding)
    before = given_counts(original, count(model, analysis.index))
    size = original.ByteSize()
    if round_to != 1:
        from acc.prune.rates import check_round_to  # imports torch: only when asked for

        round_to = check_round_to(analysis, round_to)
    if ratio is not None:
        plan = ratio_plan(analysis, ratio, criterion, round_to)
        out = rewrite(analysis, plan)
        diffs = verify_equal(masked_model(analysis, plan), out, what="shrunk model")
        return ShrinkResult(out, "ratio", before, count(out), plan, analysis, diffs, size, out.ByteSize())
    purified = purify(model)
    diffs = verify_equal(original, purified.model, what="purified model")
    after = count(purified.model)
    out = without_inferred_shapes(purified.model)
    grew = growth(before, after, size, out.ByteSize())
    if grew is not None:
        unchanged = f"the input is returned unchanged: purification would have given {grew}"
        return ShrinkResult(original, "purify", before, before, Plan(), analysis, [], size, size, unchanged)
    return ShrinkResult(out, "purify", before, after, purified.plan, analysis, diffs, size, out.ByteSize())


def given_counts(original: onnx.ModelProto, imported: Counts) -> Counts:
    """The parameters of the model as given (its Constant nodes' weights included); the FLOPs of
    its import (they need the shapes the import infers)."""
    given = count(ConstantsToInitializers()(original).model)
    return Counts(given.params, given.nonzero_params, imported.flops, imported.node_flops)


def without_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    slim = onnx.ModelProto()
    slim.CopyFrom(model)
    del slim.graph.value_info[:]
    return slim


def growth(before: Counts, after: Counts, bytes_before: int, bytes_after: int) -> str | None:
    """What a lossless result holds more of than its input, in words; None when it holds no more."""
    if after.params > before.params:
        return f"more parameters ({after.params:,} > {before.params:,})"
    if bytes_after > bytes_before:
        return f"a bigger file ({bytes_after:,} > {bytes_before:,} bytes)"
    return None
