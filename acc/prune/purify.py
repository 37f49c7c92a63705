"""Purification after pruning (AutoCompress part 3).

(a) Lossless: channels that are provably dead in the masked graph (no writer or no reader left,
    including input channels whose columns are all zero in every reader) are removed by the
    ONNX-side pass acc.passes.purify when the graph is rewritten.
(b) Near-zero: ADMM on a non-convex loss leaves channels that are almost pruned. Only those are
    candidates: a kept channel whose norm (over every weight that writes or reads it, the norm the
    hard prune ranks by: L2, or L1 with criterion l1) is below NEAR_ZERO (5 %) of the mean norm of
    its group's kept channels. They are tried smallest first, a growing batch at a time, and each
    removal is kept while the validation loss stays within `tolerance` (relative, default 0.1 %)
    of where it started. It decides on at least MIN_VAL_IMAGES (256) validation images: with
    fewer, it is skipped and the record says why (a handful of images cannot tell a near-zero
    channel from a useful one). Every group keeps at least one channel. With `round_to` K
    (`--round-to`) a candidate is a block of K channels of one group (its K smallest candidates
    left, its norm the largest of them) and a group keeps at least K, so widths stay multiples of K.

Near-zero purification runs on the model that was fine-tuned: by default the physically smaller
one (acc.prune.shrink_phase: its own analysis, the constrained groups under their original names,
the hard prune's removals already gone rather than zero), else the masked full-width one.

The record (`NearZeroResult.record()`, in the run's history) also holds what the hard prune kept
per group (as the trainer recorded it at the hard prune), so the report can show every removal
beyond the requested rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from acc.passes.mask import ZEROED_ROLES
from acc.prune.constraints import position_mask
from acc.prune.objective import evaluate

NEAR_ZERO = 0.05  # a candidate's norm relative to the mean norm of its group's kept channels
MIN_VAL_IMAGES = 256  # fewer validation images than this: near-zero purification is skipped
DEFAULT_TOLERANCE = 1e-3  # relative increase of the validation loss a removal may cost


@dataclass
class NearZeroResult:
    removed: dict  # group name -> channels removed
    evaluations: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    kept_by_hard_prune: dict = field(default_factory=dict)  # group name -> channels the hard prune kept
    candidates: int = 0  # channels below the near-zero threshold
    val_images: int = 0
    skipped: str | None = None  # why it did not run

    def record(self, tolerance: float) -> dict:
        return {"removed": self.removed, "evaluations": self.evaluations, "val_loss_before": self.loss_before,
                "val_loss_after": self.loss_after, "kept_by_hard_prune": self.kept_by_hard_prune,
                "candidates": self.candidates, "val_images": self.val_images, "skipped": self.skipped,
                "threshold": NEAR_ZERO, "tolerance": tolerance, "min_val_images": MIN_VAL_IMAGES}


def kept_by_hard_prune(trainer) -> dict[str, int]:
    """Channels with any weight left after the hard prune, per constrained group: as the trainer
    recorded them then (a small model has lost its removed channels since), else counted now."""
    if trainer.state.kept_by_hard_prune:
        return dict(trainer.state.kept_by_hard_prune)
    return {g.name: int((g.scores(trainer.tensors) > 0).sum()) for g in trainer.constraints.groups}


def _norms(g, tensors) -> torch.Tensor:
    scores = g.scores(tensors)  # sums of squares (l2) or of magnitudes (l1)
    return scores.sqrt() if g.criterion == "l2" else scores


def _candidates(trainer, threshold: float = NEAR_ZERO, round_to: int = 1):
    """(relative norm, group constraint, channels) for every kept, prunable channel whose norm is
    below `threshold` of its group's mean kept norm (in blocks of `round_to` channels of one
    group, smallest first within the group), smallest first."""
    out = []
    for g in trainer.constraints.groups:
        norms = _norms(g, trainer.tensors)
        kept = (norms > 0) & ~g.frozen
        if int(kept.sum()) <= 1:
            continue
        mean = float(norms[kept].mean()) or 1.0
        below = sorted((float(norms[j]) / mean, j) for j in torch.nonzero(kept).flatten().tolist()
                       if float(norms[j]) / mean < threshold)
        for b in range(0, len(below) - round_to + 1, round_to):
            block = below[b:b + round_to]
            out.append((block[-1][0], g, [j for _, j in block]))
    out.sort(key=lambda c: (c[0], c[1].name, c[2]))
    return out


def skipped(trainer, reason: str) -> NearZeroResult:
    return NearZeroResult({}, kept_by_hard_prune=kept_by_hard_prune(trainer), val_images=len(trainer.val), skipped=reason)


@torch.no_grad()
def purify_near_zero(trainer, tolerance: float = DEFAULT_TOLERANCE, max_evaluations: int = 24, val_limit: int = 1000,
                     min_images: int = MIN_VAL_IMAGES, threshold: float = NEAR_ZERO, round_to: int = 1) -> NearZeroResult:
    n_val = min(len(trainer.val), val_limit)
    if n_val < min_images:
        return skipped(trainer, f"only {n_val} validation images, it decides on at least {min_images}")
    if max_evaluations <= 0:
        return skipped(trainer, "no evaluations allowed")
    result = NearZeroResult({}, kept_by_hard_prune=kept_by_hard_prune(trainer), val_images=n_val)
    candidates = _candidates(trainer, threshold, round_to)
    result.candidates = len(candidates)
    if not candidates:
        return result
    val = trainer.val.sample(val_limit, seed=trainer.cfg.seed)
    base = evaluate(trainer.module, val, trainer.objective, world=trainer.world)["loss"]
    limit = base * (1 + tolerance) if base > 0 else tolerance
    removed: dict[str, int] = {}
    left_in_group = {g.name: int(((g.scores(trainer.tensors) > 0) & ~g.frozen).sum()) for g in trainer.constraints.groups}
    i, batch, evals, loss = 0, 1, 0, base
    while i < len(candidates) and evals < max_evaluations:
        chunk, tentative = [], dict(left_in_group)
        for c in candidates[i:i + batch]:
            if tentative[c[1].name] - len(c[2]) >= round_to:  # every group keeps at least one channel (K)
                chunk.append(c)
                tentative[c[1].name] -= len(c[2])
        if not chunk:
            i += batch
            continue
        saved, new_masks = {}, {}
        for _, g, js in chunk:
            kept = torch.ones(g.width, dtype=torch.bool)
            kept[js] = False
            for name, entries in g.position_masks(kept, ZEROED_ROLES).items():
                t = trainer.tensors[name]
                saved.setdefault(name, t.detach().clone())
                m = position_mask(t.shape, entries, t.device)
                new_masks[name] = new_masks[name] & m if name in new_masks else m
        for name, m in new_masks.items():
            trainer.tensors[name].mul_(m.to(trainer.tensors[name].dtype))
        trial = evaluate(trainer.module, val, trainer.objective, world=trainer.world)["loss"]
        evals += 1
        if trial <= limit:
            loss = trial
            for name, m in new_masks.items():
                trainer.masks[name] = trainer.masks[name] & m if name in trainer.masks else m
            for _, g, js in chunk:
                removed[g.name] = removed.get(g.name, 0) + len(js)
                left_in_group[g.name] -= len(js)
            i += batch
            batch *= 2
        else:
            for name, value in saved.items():
                trainer.tensors[name].copy_(value)
            if batch == 1:
                i += 1
            batch = max(1, batch // 2)
    result.removed, result.evaluations, result.loss_before, result.loss_after = removed, evals, base, loss
    return result


def removals_beyond_request(groups: list[dict]) -> list[dict]:
    """The report's group rows that ended with fewer channels than their requested rate keeps."""
    return [g for g in groups if g["width_after"] < g["kept_requested"]]


def summary_line(report: dict) -> str | None:
    """One line for the command's summary: what purification removed beyond the requested rates."""
    p = report.get("purification")
    if not p:
        return None
    near = p["near_zero"]
    extra_near = sum(g["removed_near_zero"] for g in p["beyond_requested"])
    extra_lossless = sum(g["removed_lossless"] for g in p["beyond_requested"])
    if near.get("skipped"):
        head = f"near-zero purification skipped ({near['skipped']})"
    else:
        head = (f"near-zero purification removed {extra_near} channel(s) beyond the requested rates "
                f"({near.get('candidates', '?')} below {near.get('threshold', NEAR_ZERO):.0%} of their group's mean norm, "
                f"validation loss within {near.get('tolerance', DEFAULT_TOLERANCE):.2%} on {near.get('val_images', '?')} images)")
    return head + f"; lossless purification removed {extra_lossless} dead channel(s) beyond them"
