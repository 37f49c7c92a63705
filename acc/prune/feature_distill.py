"""Intermediate-feature distillation while the physically smaller model fine-tunes.

After the hard prune the small model's every convolution reads a tensor the original graph also
computes: the rewrite keeps node and tensor names, and the small tensor's channels are a subset of
the original's (the plan's kept channels). Where the output distillation gives one signal per
image, these give one per layer: the small model is pulled to reproduce, channel for channel, what
the original fed each of its layers (the refit after the cut fits the same targets by least
squares, once; acc.prune.posttrain). The term is the mean over the tapped tensors of
MSE(student, teacher[:, kept]) / var(teacher[:, kept]), so layers of every scale weigh alike, and
it is added to the objective with weight `--feature-distill` while the small model trains (never
in evaluations: validation losses and the search's energies are the outputs' alone).

Tapped: the first input of every Conv of the small graph that is not a graph input, reads a float
tensor the original also has, and either is an ordinary conv (group 1: the weight's input axis is
the tensor's channel axis) or a depthwise one (its output-channel mask is the input's). The
original's taps come from the same forward pass as its outputs: an onnxruntime teacher runs the
original graph with the tapped tensors as extra outputs; a torch teacher records them with hooks.

Measured (`benchmarks/feature_distill.py`, results/feature_distill.json): the demo's command
(ResNet-20, 2x fewer parameters, 10 epochs on 9,000 images), 3 seeds side by side: W = 1 gave
84.10 +- 0.35 % against 83.62 +- 0.38 % (per seed +0.20, +1.00, +0.25 points) for 1.33x the wall
time (the extra outputs and the MSE over every tapped tensor, on one CPU thread each): more per
epoch, about what 3 more epochs cost per second. Hence off by default. (Measured with each scale
taken on the first batch a run drew; `calibrate` now takes them on a fixed batch so that a resumed
run ends where the whole run ends.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from acc.passes.analysis import Analysis
from acc.passes.plan import Plan, Removal
from acc.prune.objective import VALUE_FLOOR


DEFAULT_FEATURE_DISTILL = 0.0
FEATURE_DISTILL_MAX = 10.0  # beyond this the feature term drowns the outputs' (both are about 1 at the start)


@dataclass(frozen=True)
class Tap:
    tensor: str  # the tensor's name, in both graphs
    module: str  # the torch module of the small graph's Conv that reads it (it carries the hook)
    kept: np.ndarray  # the original's channels the small tensor holds, in order


def _attr(node: onnx.NodeProto, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def feature_taps(teacher: onnx.ModelProto, small: onnx.ModelProto, analysis: Analysis, plan: Plan) -> list[Tap]:
    """The tensors the teacher and `small` both compute that a Conv of `small` reads (see the module
    docstring), each once, with the teacher's channels it keeps. `analysis` and `plan` are of the
    model `small` was cut from; a tensor is tapped only where that model's reading conv has the
    teacher's shape (in a progressive run's later rounds the teacher is wider than the round's
    model, and its channels no longer line up with the plan's)."""
    kept_masks = Removal(analysis, plan).member_masks()
    teacher_tensors = {o for n in teacher.graph.node for o in n.output}
    graph_inputs = {i.name for i in small.graph.input}
    teacher_widths = {init.name: tuple(init.dims) for init in teacher.graph.initializer}
    initializers = analysis.index.initializers
    widths = {name: tuple(initializers[name].dims) for name in teacher_widths if name in initializers}
    small_widths = {init.name: tuple(init.dims) for init in small.graph.initializer}
    taps, seen = [], set()
    for node in small.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or not node.name:
            continue
        x, weight = node.input[0], node.input[1]
        if x in seen or x in graph_inputs or x not in teacher_tensors or weight not in small_widths \
                or weight not in widths or widths[weight] != teacher_widths[weight]:
            continue
        full_shape, small_shape = widths[weight], small_widths[weight]
        group = int(_attr(node, "group", 1))
        if group == 1:
            axis, channels = 1, full_shape[1]
        elif full_shape[1] == 1 and small_shape[1] == 1:  # depthwise: input channel k feeds output channel k
            axis, channels = 0, full_shape[0]
        else:
            continue
        mask = kept_masks.get(weight, {}).get(axis, np.ones(channels, dtype=bool))
        kept = np.flatnonzero(mask)
        if len(kept) != small_shape[axis]:
            continue  # not a plain channel subset (a column scheme's mask, say): leave it untapped
        taps.append(Tap(x, module_name(node), kept))
        seen.add(x)
    return taps


def feature_loss(student: dict, teacher: dict, taps: list[Tap], scales: dict | None = None) -> torch.Tensor | None:
    """Mean over the taps recorded on both sides of MSE(student, teacher[:, kept]) / var(teacher[:, kept]).
    `scales` (tensor -> variance), when given, is read and filled: a tap without one gets its
    variance from this batch and keeps it (one pass less per step)."""
    terms = []
    for tap in taps:
        s, t = student.get(tap.tensor), teacher.get(tap.tensor)
        if s is None or t is None:
            continue
        t = t.to(device=s.device, dtype=s.dtype)
        if len(tap.kept) != t.shape[1]:
            t = t.index_select(1, torch.as_tensor(tap.kept, device=t.device))
        if t.shape != s.shape:
            continue
        scale = None if scales is None else scales.get(tap.tensor)
        if scale is None:
            scale = _scale(t)
            if scales is not None:
                scales[tap.tensor] = scale
        terms.append(F.mse_loss(s, t) / scale)
    return torch.stack(terms).mean() if terms else None


def _scale(t: torch.Tensor) -> torch.Tensor:
    """The teacher tensor's variance, at least VALUE_FLOOR of its mean square (as the output terms')."""
    return torch.maximum(t.var(unbiased=False), VALUE_FLOOR * t.pow(2).mean()).clamp_min(1e-12)


class FeatureDistiller:
    """Records the small model's tapped inputs while it trains (forward pre-hooks on its Conv
    modules) and runs the teacher so that it gives the same tensors (`teach`)."""

    def __init__(self, taps: list[Tap], student: torch.nn.Module, teacher, original: onnx.ModelProto, weight: float):
        self.taps, self.weight = taps, weight
        self.student_values: dict[str, torch.Tensor] = {}
        self.scales: dict[str, torch.Tensor] = {}  # each tap's teacher variance (`calibrate`)
        self._hooks = []
        modules = dict(student.named_children())
        for tap in taps:
            module = modules.get(tap.module)
            if module is not None:
                self._hooks.append(module.register_forward_pre_hook(self._recorder(tap.tensor, student)))
        self.teach = _teacher_with_taps(teacher, original, [t.tensor for t in taps])

    def _recorder(self, tensor: str, student: torch.nn.Module):
        def record(module, inputs):
            if student.training:
                self.student_values[tensor] = inputs[0]
        return record

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Each tap's scale from the teacher on `x`, a fixed batch (the training set's first, not
        augmented): the same in a resumed run, and one variance pass less per step."""
        self.teach(x)
        for tap in self.taps:
            t = self.teach.values.get(tap.tensor)
            if t is not None:
                self.scales[tap.tensor] = _scale(t.index_select(1, torch.as_tensor(tap.kept, device=t.device)))
        self.teach.values = {}

    def loss(self) -> torch.Tensor | None:
        """The weighted feature term of the last training forward pass (None when nothing was recorded)."""
        term = feature_loss(self.student_values, self.teach.values, self.taps, self.scales) if self.student_values else None
        self.student_values, self.teach.values = {}, {}
        return None if term is None else self.weight * term

    def armed(self) -> bool:
        return bool(self.student_values)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.teach.close()


def attach(objective, shrinker, small, weight: float, sample: torch.Tensor) -> "FeatureDistiller | None":
    """A FeatureDistiller for `small` (an acc.prune.shrink_phase.SmallModel cut by `shrinker`),
    calibrated on `sample` and set as `objective.features`; None (and nothing set) where there is no
    teacher graph or nothing to tap."""
    teacher_graph = getattr(objective, "teacher_graph", None)
    if weight <= 0 or objective.teacher is None or teacher_graph is None:
        return None
    taps = feature_taps(teacher_graph, small.graph, shrinker.analysis, small.plan)
    if not taps:
        return None
    objective.features = FeatureDistiller(taps, small.bridge.module, objective.teacher, teacher_graph, weight)
    objective.features.calibrate(sample)
    return objective.features


def detach(objective) -> None:
    if getattr(objective, "features", None) is not None:
        objective.features.close()
        objective.features = None


def module_name(node: onnx.NodeProto) -> str:
    """The name onnx2torch gives the node's module (OnnxGraph.generate_node_name, as acc.prune.bridge maps them)."""
    return (f"{node.domain}/" + (node.name.replace(".", "/") or node.op_type)).lstrip("/")


class _OnnxRuntimeTaps:
    """The original graph in onnxruntime with the tapped tensors as extra outputs; a batch it cannot
    run hands the teaching to the torch module for good (as acc.prune.teacher.OnnxRuntimeTeacher does)."""

    def __init__(self, module: torch.nn.Module, original: onnx.ModelProto, tensors: list[str]):
        import onnxruntime as ort

        from acc.prune.teacher import free_batch, teacher_session

        graph = free_batch(original)
        known = {o.name for o in graph.graph.output}
        for name in tensors:
            if name not in known:
                graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        self.session = teacher_session(graph)
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = len(original.graph.output)
        self.names = [o.name for o in self.session.get_outputs()]
        self.values: dict[str, torch.Tensor] = {}
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        self._backup = (module, original, tensors)
        self.fallback: _TorchTaps | None = None

    def __call__(self, x: torch.Tensor):
        if self.fallback is None:
            try:
                got = self.session.run(None, {self.input_name: x.detach().contiguous().numpy()}, self.run_options)
            except Exception:  # noqa: BLE001 - e.g. a Reshape to a constant batch-1 shape
                self.fallback = _TorchTaps(*self._backup)
        if self.fallback is not None:
            out = self.fallback(x)
            self.values = self.fallback.values
            return out
        tensors = [torch.from_numpy(o) for o in got]
        self.values = dict(zip(self.names[self.outputs:], tensors[self.outputs:]))
        outs = tuple(tensors[:self.outputs])
        return outs[0] if len(outs) == 1 else outs

    def close(self) -> None:
        self.session = None
        if self.fallback is not None:
            self.fallback.close()


class _TorchTaps:
    """A torch teacher module with pre-hooks recording the tapped tensors on every call."""

    def __init__(self, module: torch.nn.Module, original: onnx.ModelProto, tensors: list[str]):
        self.module = module
        self.values: dict[str, torch.Tensor] = {}
        wanted, consumers = set(tensors), {}
        for node in original.graph.node:
            if node.op_type == "Conv" and node.name and node.input and node.input[0] in wanted \
                    and node.input[0] not in consumers.values():
                consumers[module_name(node)] = node.input[0]
        children = dict(module.named_children())
        self._hooks = []
        for name, tensor in consumers.items():
            child = children.get(name)
            if child is not None:
                self._hooks.append(child.register_forward_pre_hook(
                    lambda m, inputs, tensor=tensor: self.values.__setitem__(tensor, inputs[0].detach())))

    def __call__(self, x: torch.Tensor):
        return self.module(x)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def _teacher_with_taps(teacher, original: onnx.ModelProto, tensors: list[str]):
    from acc.prune.teacher import OnnxRuntimeTeacher

    module = teacher.module if isinstance(teacher, OnnxRuntimeTeacher) else teacher
    if isinstance(teacher, OnnxRuntimeTeacher) and not teacher.fallback:
        try:
            return _OnnxRuntimeTaps(module, original, tensors)
        except Exception:  # noqa: BLE001 - the torch module gives the same tensors, slower
            pass
    return _TorchTaps(module, original, tensors)
