"""The training objective over every output of the model: cross-entropy on labels for the
classifier output, distillation from the original model for the others (for all of them without
labels).

Each output has a kind, read from the ONNX graph (`output_kinds`) or, where the graph does not
say, from its rank at run time:
- `logits` (rank 2), `probabilities` (rank 2, made by Softmax) or `log_probabilities` (LogSoftmax):
  a classifier. Distilled by the KL divergence of temperature-softened distributions,
  KL(softmax(t / T) || softmax(s / T)) * T^2 with T = 4, on the logits (the log of probabilities,
  which differs from the logits by a constant per row and so gives the same softmax). With labels,
  the first classifier output is scored by (1 - a) * cross-entropy + a * that KL term, a the
  distillation weight (`--distill-weight`: 0 = labels only, 1 = the original's outputs only): the
  original's soft outputs carry more per image than one label, which counts on small data.
- `values`: anything else (other ranks, or rank 2 made by Sigmoid, Tanh, Relu or Clip: boxes, score
  maps, masks, landmarks, features, multi-label scores): mean squared error divided by the
  variance of the teacher's output over the batch, so heads of different scales weigh alike (a
  student that only copies the teacher's mean scores 1); the divisor is at least VALUE_FLOOR (1 %)
  of the output's mean square: a head whose outputs barely vary (a random network's Sigmoid scores
  vary by 1e-4) would otherwise get gradients thousands of times larger, and training diverges.
The loss is the mean over the outputs that have a term; for a one-output classifier it is exactly
the mixed term above (with labels) or the KL term (without). Non-float outputs (indices, counts)
carry no gradient and are left out.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F

from acc.errors import InputError
from acc.prune.teacher_memo import TeacherMemo

DISTILL_TEMPERATURE = 4.0
# Share of distillation in the labelled classifier's term. Measured (benchmarks/training_recipe.py,
# results/training_recipe.json; ResNet-20 2x, one-shot + 4 epochs on 1,350 images, mean of 2 seeds):
# a=0 70.6 %, 0.5 70.3 (1 seed), 0.9 70.8, 1 71.7; 0.9 keeps the labels in, within the noise of 1.
DEFAULT_DISTILL_WEIGHT = 0.9
VALUE_FLOOR = 0.01  # the MSE's scale is at least this share of the teacher output's mean square
CLASSIFIER_KINDS = ("logits", "probabilities", "log_probabilities")
# Ops that pass a classifier's output through unchanged in meaning (the producer is looked up behind them).
_TRANSPARENT = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast")
_PROBABILITY_OPS = {"Softmax": "probabilities", "LogSoftmax": "log_probabilities"}


def outputs(out) -> list:
    """The model's outputs as a list (a one-output model returns a tensor)."""
    return list(out) if isinstance(out, (tuple, list)) else [out]


def first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def output_kinds(model: onnx.ModelProto) -> list[str | None]:
    """Per graph output: its kind (see the module docstring), or None where the rank is unknown."""
    producer = {o: n for n in model.graph.node for o in n.output}
    kinds = []
    for out in model.graph.output:
        tensor_type = out.type.tensor_type
        if not tensor_type.HasField("shape"):
            kinds.append(None)
            continue
        if tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            kinds.append("other")
            continue
        if len(tensor_type.shape.dim) != 2:
            kinds.append("values")
            continue
        node = producer.get(out.name)
        while node is not None and node.op_type in _TRANSPARENT:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in _PROBABILITY_OPS:
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            kinds.append(_PROBABILITY_OPS[node.op_type] if axis in (1, -1) else "values")
        elif node is not None and node.op_type in ("Sigmoid", "HardSigmoid", "Relu", "Clip", "Tanh"):
            kinds.append("values")  # bounded or one-sided: scores per column, not a distribution's logits
        else:
            kinds.append("logits")
    return kinds


def classifier_output(kinds: list[str | None]) -> int | None:
    """The first output the graph marks as a classifier (None: none, or only unknown ranks)."""
    return next((i for i, k in enumerate(kinds) if k in CLASSIFIER_KINDS), None)


def choose_supervision(kinds: list[str | None], data_has_labels: bool, labels: bool | None,
                       distill_weight: float = 0.0) -> tuple[bool, bool]:
    """(use labels, needs the original model as teacher). Labels are used when asked (`labels`
    True) or, by default, when the data has them and the model has a classifier output; the
    teacher is needed for every output that labels do not score, and for the labelled one too when
    `distill_weight` mixes distillation into its term."""
    possible = classifier_output(kinds) is not None or None in kinds
    if labels and not possible:
        raise InputError("--labels needs a classifier output ([batch, classes]); this model has none: leave "
                         "--labels out to distil every output from the original model")
    use_labels = (data_has_labels and possible) if labels is None else labels
    return use_labels, not use_labels or len(kinds) > 1 or distill_weight > 0


def check_distillation(distill_weight: float, temperature: float) -> None:
    if not 0.0 <= distill_weight <= 1.0:
        raise InputError(f"--distill-weight must be in [0, 1] (0 = labels only, 1 = distillation only), got {distill_weight}")
    if not temperature > 0:
        raise InputError(f"--temperature must be more than 0, got {temperature}")


def describe_objective(kinds: list[str | None], use_labels: bool, names: list[str], distill_weight: float = 0.0,
                       temperature: float = DISTILL_TEMPERATURE) -> str:
    labelled = "cross-entropy on labels"
    if use_labels and distill_weight >= 1:
        labelled = f"distillation from the original model (T={temperature:g})"
    elif use_labels and distill_weight > 0:
        labelled = f"{1 - distill_weight:g} x cross-entropy on labels + {distill_weight:g} x distillation (T={temperature:g})"
    if len(kinds) == 1:
        return labelled if use_labels else "distillation from the original model"
    if use_labels:
        cls = classifier_output(kinds) or 0
        return (f"{labelled} for output '{names[cls]}', distillation from the original model "
                f"for the other {len(kinds) - 1}")
    return f"distillation from the original model, all {len(kinds)} outputs"


def _kind(kinds, i: int, tensor: torch.Tensor) -> str:
    kind = kinds[i] if kinds is not None and i < len(kinds) else None
    if kind is None:
        if not tensor.is_floating_point():
            return "other"
        return "logits" if tensor.dim() == 2 else "values"
    return kind


def classifier_index(outs: list, kinds=None) -> int | None:
    """The first classifier output (the one labels score), or None."""
    return next((i for i, o in enumerate(outs) if _kind(kinds, i, o) in CLASSIFIER_KINDS), None)


def as_logits(x: torch.Tensor, kind: str) -> torch.Tensor:
    return torch.log(x.clamp_min(1e-12)) if kind == "probabilities" else x


def distill_term(student: torch.Tensor, target: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    if kind in CLASSIFIER_KINDS:
        t = temperature
        s, g = as_logits(student, kind), as_logits(target, kind)
        return F.kl_div(F.log_softmax(s / t, 1), F.softmax(g / t, 1), reduction="batchmean") * t * t
    target = target.to(student.dtype)
    mean_square = target.pow(2).mean()
    scale = torch.maximum(target.var(unbiased=False), VALUE_FLOOR * mean_square) if target.numel() > 1 else mean_square
    scale = scale if float(scale) > 0 else torch.ones((), dtype=student.dtype, device=student.device)
    return F.mse_loss(student, target) / scale


class Objective:
    """`objective(module(x), x, labels)`: the loss of one batch (see the module docstring).
    `kinds`: per output, from `output_kinds(model)`; None decides by rank at run time."""

    def __init__(self, teacher=None, use_labels: bool = True,
                 temperature: float = DISTILL_TEMPERATURE, kinds: list[str | None] | None = None,
                 distill_weight: float = 0.0):
        self.teacher = teacher
        self.use_labels = use_labels
        self.temperature = temperature
        self.kinds = kinds
        self.distill_weight = distill_weight  # distillation's share of the labelled output's term
        self.memo = TeacherMemo()  # the teacher's outputs on evaluation sets, computed once
        # While the physically smaller model fine-tunes: intermediate-feature distillation
        # (acc.prune.feature_distill.FeatureDistiller), from the graph the teacher runs.
        self.features = None
        self.teacher_graph: onnx.ModelProto | None = None
        if isinstance(teacher, torch.nn.Module):  # else a callable that needs no gradients (acc.prune.teacher)
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def terms(self, student_out, x: torch.Tensor, labels: torch.Tensor | None, teach=None) -> list[torch.Tensor | None]:
        """Each output's term (the cross-entropy for the labelled classifier output), None for an
        output that has none (non-float, or no teacher to distil it from). `teach(x)`, when given,
        stands for the teacher (its outputs replayed, acc.prune.teacher_memo)."""
        outs = outputs(student_out)
        cls = classifier_index(outs, self.kinds)
        labelled = self.use_labels and labels is not None and cls is not None
        a = self.distill_weight if self.teacher is not None else 0.0
        targets = None
        features = self.features is not None and teach is None and self.features.armed()
        if self.teacher is not None and (not labelled or len(outs) > 1 or a > 0 or features):
            with torch.no_grad():  # with features, the teacher also records the tapped tensors
                targets = outputs((teach or (self.features.teach if features else self.teacher))(x))
        terms: list[torch.Tensor | None] = []
        for i, s in enumerate(outs):
            kind = _kind(self.kinds, i, s)
            if labelled and i == cls:
                ce = F.cross_entropy(as_logits(s, kind), labels) if a < 1 else 0.0
                kl = distill_term(s, targets[i], kind, self.temperature) if a > 0 else 0.0
                terms.append(ce if a == 0 else (1 - a) * ce + a * kl)
            elif targets is not None and kind != "other" and s.is_floating_point():
                terms.append(distill_term(s, targets[i], kind, self.temperature))
            else:
                terms.append(None)
        return terms

    def __call__(self, student_out, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        loss = mean_loss(self.terms(student_out, x, labels))
        if self.features is not None:
            term = self.features.loss()  # None unless this was a training pass of the small model
            if term is not None:
                loss = loss + term
        return loss


def mean_loss(terms: list[torch.Tensor | None]) -> torch.Tensor:
    present = [t for t in terms if t is not None]
    if not present:
        raise RuntimeError("nothing to learn from: no labels for a classifier output and no teacher to distil")
    return present[0] if len(present) == 1 else torch.stack(present).mean()


@torch.no_grad()
def evaluate(module: torch.nn.Module, data, objective: Objective, batch_size: int = 256, world=None) -> dict:
    """Mean loss over all outputs, and top-1 (`accuracy`) and top-5 (`top5`, with 5 classes or
    more) accuracy of the first classifier output when the data has labels; for a model with
    several outputs, each output's own loss too (`output_losses`, in the graph's order). With a
    multi-process `world` each rank scores every world.size-th item and the sums are added up
    over the ranks, so every rank gets the same figures."""
    was_training = module.training
    module.eval()
    memo_key = data  # a rank's share is a new object each call: remember the teacher's outputs by the whole set's
    if world is not None and world.size > 1:
        data = data.subset(range(world.rank, len(data), world.size))
    teach = objective.memo.for_batches(memo_key, batch_size, objective.teacher) if objective.teacher is not None else None
    total_loss, correct, correct5, count, classes, has_classifier = 0.0, 0, 0, 0, 0, 0
    n_outputs = len(objective.kinds) if objective.kinds is not None else None
    per_output, scored = None, None  # per-output sums; which outputs have a term
    for i, (x, y) in enumerate(data.batches(batch_size)):
        outs = outputs(module(x))
        terms = objective.terms(outs, x, y, teach=None if teach is None else (lambda x, i=i: teach(i, x)))
        total_loss += float(mean_loss(terms)) * len(x)
        if len(terms) > 1:
            scored = [t is not None for t in terms]
            losses = [0.0 if t is None else float(t) * len(x) for t in terms]
            per_output = losses if per_output is None else [a + b for a, b in zip(per_output, losses)]
        cls = classifier_index(outs, objective.kinds)
        if y is not None and cls is not None:
            has_classifier = 1
            scores = outs[cls]
            correct += int((scores.argmax(1) == y).sum())
            classes = scores.shape[1]
            if classes >= 5:
                correct5 += int((scores.topk(5, 1).indices == y[:, None]).any(1).sum())
        count += len(x)
    module.train(was_training)
    if world is not None and world.size > 1:
        # Every rank must add lists of one length: per-output sums only where the graph says how many.
        extra = (per_output or [0.0] * n_outputs) if n_outputs and n_outputs > 1 else []
        sums = world.sum([total_loss, correct, correct5, count, has_classifier] + extra)
        total_loss, correct, correct5, count, has_classifier = sums[:5]
        per_output = sums[5:] or None
    result = {"loss": total_loss / max(count, 1)}
    if per_output is not None:
        scored = scored or [True] * len(per_output)
        result["output_losses"] = [v / max(count, 1) if ok else None for v, ok in zip(per_output, scored)]
    if data.labels is not None and has_classifier:
        result["accuracy"] = correct / max(count, 1)
        if classes >= 5:
            result["top5"] = correct5 / max(count, 1)
    return result
