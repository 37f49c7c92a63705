"""Fine-tune the physically smaller model: after the hard prune the masks become shapes.

The hard-pruned model is written back into its ONNX graph, purified (acc.passes.purify removes
every zeroed channel), verified against the masked model and converted to torch again; the
fine-tuning then trains that small model, so an epoch at 8x fewer parameters costs about an
eighth of the masked full-width model's.

Why it computes what masked fine-tuning computes (up to the order of float sums):
- forward: a removed channel of the masked model is exactly zero at every step: its filter, bias
  and BN scale and shift are masked, so BN gives beta = 0 whatever the batch statistics, and every
  reader's columns for it are masked; the kept channels see what the small model's see;
- backward: the removed weights get zero gradient (a zero input, or an output read by zero
  columns), so momentum and weight decay never move them, and SGD's update is per element;
- the data order, the augmentation and the global seed are set per epoch, the same in both.
BN running statistics of removed channels drift in the masked model but never reach an output
(scale and shift are zero). Masks that are not removed channels -- the column scheme's zeroed
columns inside kept channels -- stay masks on the small model, carried over by initializer name
and kept indices, and are re-applied after every step as before. Dropout would differ (a smaller
tensor draws another mask); exported inference graphs have none.

A checkpoint after the hard prune holds `SmallModel.payload()` (the small graph and the plan), so a
resumed run and every rank of a multi-process run rebuild the same module from the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from acc.errors import InputError
from acc.passes.analysis import Analysis, analyze
from acc.passes.channels import WEIGHT_ROLES
from acc.passes.mask import masked_model
from acc.passes.plan import Plan, Removal
from acc.passes.purify import purify
from acc.passes.verify import verify_equal
from acc.prune.bridge import TorchModel
from acc.prune.constraints import ConstraintSet, GroupConstraint


@dataclass
class SmallModel:
    graph: onnx.ModelProto  # the physically smaller graph, with the hard-pruned weights
    plan: Plan  # the full model's channels it keeps, per group
    groups: list[str]  # the groups the rates constrained (near-zero purification looks at these)
    bridge: TorchModel
    constraints: ConstraintSet  # those groups at their small widths (no projection is left to do)
    masks: dict[str, torch.Tensor]  # what stays a mask on the small weights (torch layout)

    def payload(self) -> dict:
        """What a checkpoint needs to rebuild this model (the weights travel in the state dict)."""
        return {"onnx": self.graph.SerializeToString(), "plan": self.plan.to_json(), "groups": list(self.groups)}


class Shrinker:
    """Turns the trainer's hard-pruned full model into a SmallModel (`from_hard_prune`), rebuilds one
    from a checkpoint (`from_payload`), and maps trained small weights back to full width (`expand`)."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, full: TorchModel, criterion: str = "l2",
                 device: torch.device | str = "cpu"):
        self.model = model  # the imported graph the full bridge was made from
        self.analysis = analysis
        self.full = full
        self.criterion = criterion
        self.device = torch.device(device)
        self.small: SmallModel | None = None

    def from_hard_prune(self, trainer) -> SmallModel:
        return self.from_masks(trainer.masks, [g.name for g in trainer.constraints.groups])

    def from_masks(self, masks: dict[str, torch.Tensor], groups: list[str], verify: bool = True) -> SmallModel:
        """The full model as its masks left it (`masks` applied to its weights), physically smaller.
        `verify=False` skips the onnxruntime check (the search's candidates: scored, never written)."""
        masked = self.full.to_onnx()
        purified = purify(masked)
        if verify:
            verify_equal(masked, purified.model, what="the hard-pruned model made physically smaller")
        return self._build(purified.model, purified.plan, list(groups), self._carry_masks(masks, purified.plan))

    def from_payload(self, payload: dict) -> SmallModel:
        graph = onnx.load_from_string(payload["onnx"])
        return self._build(graph, Plan.from_json(payload["plan"]), payload["groups"], masks={})

    def _build(self, graph: onnx.ModelProto, plan: Plan, groups: list[str], masks: dict) -> SmallModel:
        analysis = analyze(graph)
        trainable = {m.initializer for m in analysis.members if m.role in WEIGHT_ROLES}
        try:
            bridge = TorchModel(graph, trainable=trainable)
        except InputError as err:
            raise InputError(f"the physically smaller model cannot be trained: {err} (--finetune-masked trains "
                             f"the full-width masked model instead)") from None
        bridge.to(self.device)
        names = {g.name for g in analysis.groups}
        constraints = ConstraintSet([GroupConstraint(analysis, bridge, name, analysis.group(name).width, self.criterion)
                                     for name in groups if name in names], [])
        tensors = bridge.tensors
        masks = {name: m.to(tensors[name].device) for name, m in masks.items() if name in tensors}
        self.small = SmallModel(graph, plan, list(groups), bridge, constraints, masks)
        return self.small

    def _carry_masks(self, masks: dict[str, torch.Tensor], plan: Plan) -> dict[str, torch.Tensor]:
        """The full model's masks cut to the kept channels; those that keep everything are dropped
        (the removed channels are gone, not masked)."""
        kept = Removal(self.analysis, plan).member_masks()
        out = {}
        for name, mask in masks.items():
            view = self.full.views[name]
            m = mask.detach().cpu().numpy()
            m = m.T if view.transposed else m
            for axis, keep in kept.get(name, {}).items():
                m = np.compress(keep, m, axis=axis)
            if m.all():
                continue
            m = m.T if view.transposed else m
            out[name] = torch.from_numpy(np.ascontiguousarray(m))
        return out

    def expand(self, trained: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
        """The full-width masked model that computes what `trained` (a small graph of `plan`)
        computes: the imported graph with `trained`'s float weights at the kept positions and the
        removed channels zeroed as the hard prune left them (acc.passes.mask)."""
        full = masked_model(self.analysis, plan)
        kept = Removal(self.analysis, plan).member_masks()
        small = {t.name: t for t in trained.graph.initializer}
        for t in full.graph.initializer:
            if t.name not in small:
                continue
            value = numpy_helper.to_array(small[t.name])
            if not np.issubdtype(value.dtype, np.floating):
                continue  # shape constants the rewrite fixed (Reshape targets, Split sizes): the full graph's stay
            array = numpy_helper.to_array(t).copy()
            index = np.ix_(*[np.flatnonzero(kept.get(t.name, {}).get(axis, np.ones(n, dtype=bool)))
                             for axis, n in enumerate(array.shape)]) if array.ndim else ()
            if array[index].shape != value.shape:
                raise ValueError(f"initializer {t.name}: small shape {value.shape} does not fit the kept positions")
            array[index] = value
            t.CopyFrom(numpy_helper.from_array(array, t.name))
        return full


def compose(first: Plan, then: Plan, analysis: Analysis) -> Plan:
    """`then` (indices into the model `first` made) as indices into `analysis`'s groups."""
    keep = {}
    widths = {g.name: g.width for g in analysis.groups}
    for name in set(first.keep) | set(then.keep):
        if name not in first.keep and name not in widths:
            continue  # a group the rewrite named anew: the report reads its width from the final graph
        before = first.keep.get(name, list(range(widths[name])))
        keep[name] = [before[j] for j in then.keep[name]] if name in then.keep else list(before)
    return Plan(keep)
