"""The training objective: cross-entropy with labels, or distillation from the original model.

Without labels the student learns the teacher's outputs: KL divergence of temperature-softened
logits for classifiers (outputs of rank 2), mean squared error for anything else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTILL_TEMPERATURE = 4.0


def first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class Objective:
    def __init__(self, teacher: torch.nn.Module | None = None, use_labels: bool = True, temperature: float = DISTILL_TEMPERATURE):
        self.teacher = teacher
        self.use_labels = use_labels
        self.temperature = temperature
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def __call__(self, student_out: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.use_labels and labels is not None:
            return F.cross_entropy(student_out, labels)
        with torch.no_grad():
            target = first_output(self.teacher(x))
        if student_out.dim() == 2:
            t = self.temperature
            return F.kl_div(F.log_softmax(student_out / t, 1), F.softmax(target / t, 1), reduction="batchmean") * t * t
        return F.mse_loss(student_out, target)


@torch.no_grad()
def evaluate(module: torch.nn.Module, data, objective: Objective, batch_size: int = 256, world=None) -> dict:
    """Mean loss, and top-1 (`accuracy`) and top-5 (`top5`, with 5 classes or more) accuracy when
    the data has labels. With a multi-process `world` each rank scores every world.size-th item
    and the sums are added up over the ranks, so every rank gets the same figures."""
    was_training = module.training
    module.eval()
    if world is not None and world.size > 1:
        data = data.subset(range(world.rank, len(data), world.size))
    total_loss, correct, correct5, count, classes = 0.0, 0, 0, 0, 0
    for x, y in data.batches(batch_size):
        out = first_output(module(x))
        total_loss += float(objective(out, x, y)) * len(x)
        if y is not None and out.dim() == 2:
            correct += int((out.argmax(1) == y).sum())
            classes = out.shape[1]
            if classes >= 5:
                correct5 += int((out.topk(5, 1).indices == y[:, None]).any(1).sum())
        count += len(x)
    module.train(was_training)
    if world is not None and world.size > 1:
        total_loss, correct, correct5, count = world.sum([total_loss, correct, correct5, count])
    result = {"loss": total_loss / max(count, 1)}
    if data.labels is not None:
        result["accuracy"] = correct / max(count, 1)
        if classes >= 5:
            result["top5"] = correct5 / max(count, 1)
    return result
