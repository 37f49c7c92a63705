"""Purification after pruning (AutoCompress part 3).

(a) Lossless: channels that are provably dead in the masked graph (no writer or no reader left,
    including input channels whose columns are all zero in every reader) are removed by the
    ONNX-side pass acc.passes.purify when the graph is rewritten.
(b) Near-zero: ADMM on a non-convex loss leaves channels that are almost pruned. Try removing the
    kept channels of smallest relative norm, a growing batch at a time, and keep each removal
    while the validation loss stays within `tolerance` (relative) of where it started.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from acc.passes.mask import ZEROED_ROLES
from acc.prune.constraints import position_mask
from acc.prune.objective import evaluate


@dataclass
class NearZeroResult:
    removed: dict  # group name -> channels removed
    evaluations: int
    loss_before: float
    loss_after: float


def _candidates(trainer):
    """(relative score, group constraint, channel) for every kept, prunable channel, smallest first."""
    tensors = trainer.tensors
    out = []
    for g in trainer.constraints.groups:
        scores = g.scores(tensors)
        kept = scores > 0
        kept &= ~g.frozen
        if int(kept.sum()) <= 1:
            continue
        mean = float(scores[kept].mean()) or 1.0
        for j in torch.nonzero(kept).flatten().tolist():
            out.append((float(scores[j]) / mean, g, j))
    out.sort(key=lambda c: (c[0], c[1].name, c[2]))
    return out


@torch.no_grad()
def purify_near_zero(trainer, tolerance: float = 1e-3, max_evaluations: int = 24, val_limit: int = 1000) -> NearZeroResult:
    val = trainer.val.sample(val_limit, seed=trainer.cfg.seed)
    base = evaluate(trainer.module, val, trainer.objective, world=trainer.world)["loss"]
    limit = base * (1 + tolerance) if base > 0 else tolerance
    candidates = _candidates(trainer)
    removed: dict[str, int] = {}
    left_in_group = {g.name: int(((g.scores(trainer.tensors) > 0) & ~g.frozen).sum()) for g in trainer.constraints.groups}
    i, batch, evals, loss = 0, 1, 0, base
    while i < len(candidates) and evals < max_evaluations:
        chunk, tentative = [], dict(left_in_group)
        for c in candidates[i:i + batch]:
            if tentative[c[1].name] > 1:  # every group keeps at least one channel
                chunk.append(c)
                tentative[c[1].name] -= 1
        if not chunk:
            i += batch
            continue
        saved, new_masks = {}, {}
        for _, g, j in chunk:
            kept = torch.ones(g.width, dtype=torch.bool)
            kept[j] = False
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
            for _, g, _ in chunk:
                removed[g.name] = removed.get(g.name, 0) + 1
                left_in_group[g.name] -= 1
            i += batch
            batch *= 2
        else:
            for name, value in saved.items():
                trainer.tensors[name].copy_(value)
            if batch == 1:
                i += 1
            batch = max(1, batch // 2)
    return NearZeroResult(removed, evals, base, loss)
