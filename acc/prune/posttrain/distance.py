"""How far the pruned model's outputs are from the original's, on images neither was fitted on."""

from __future__ import annotations

import torch

from acc.prune.objective import Objective, evaluate, outputs


@torch.no_grad()
def output_distance(module: torch.nn.Module, reference: torch.nn.Module, data, objective: Objective,
                    batch_size: int = 256) -> dict:
    """The objective's distillation loss (KL for a classifier), the relative L2 distance of every
    float output (||y - y0|| / ||y0|| over all images), the top-1 agreement of the first rank-2
    output, and accuracy when the data has labels."""
    module.eval()
    reference.eval()
    scores = evaluate(module, data, objective, batch_size)
    diff, norm, agree, count, rank2 = 0.0, 0.0, 0, 0, False
    for x, _ in data.batches(batch_size):
        got, want = outputs(module(x)), outputs(reference(x))
        for a, b in zip(got, want):
            if a.is_floating_point():
                diff += float((a.double() - b.double()).pow(2).sum())
                norm += float(b.double().pow(2).sum())
        first = next(((a, b) for a, b in zip(got, want) if a.dim() == 2 and a.is_floating_point()), None)
        if first is not None:
            rank2 = True
            agree += int((first[0].argmax(1) == first[1].argmax(1)).sum())
        count += len(x)
    out = {"distill_loss": scores["loss"], "relative_l2": (diff / norm) ** 0.5 if norm > 0 else 0.0,
           "images": count}
    if rank2:
        out["top1_agreement"] = agree / max(count, 1)
    if "accuracy" in scores:
        out["accuracy"] = scores["accuracy"]
    return out


def accuracy(module: torch.nn.Module, data, kinds) -> float | None:
    """Top-1 accuracy of the first classifier output on labelled `data` (None without labels)."""
    if data is None or data.labels is None:
        return None
    return evaluate(module, data, Objective(None, use_labels=True, kinds=kinds)).get("accuracy")
