"""Channel-group analysis: which channels of an ONNX graph can be removed, and which must go together.

The driver walks the graph in topological order and applies one rule per op (op_rules.RULES).
The result is a list of ChannelGroup (the unit of structured pruning) and the boundaries (channels
that must stay, with the reason), plus the members and shape fixes the rewrite needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from acc.passes.base import opset_version
from acc.passes.channels import ElementTable, Member, ShapeFix, TensorChannels
from acc.passes.graph_index import GraphIndex, attrs_of
from acc.passes.inputs import infer_layout
from acc.passes.op_rules import RULES


@dataclass
class ChannelGroup:
    """Channels removed together. `channels[j]` holds the element ids of the group's channel j."""

    id: int
    name: str
    channels: list[np.ndarray]
    frozen: list[str | None]  # per channel: why it must stay, or None
    members: list[int]  # indices into Analysis.members
    producers: list[str]  # nodes whose outputs open this group
    unit: str = "channel"  # "head": each channel is a whole attention head (all of its positions)

    @property
    def width(self) -> int:
        return len(self.channels)

    @property
    def prunable(self) -> list[int]:
        return [j for j, why in enumerate(self.frozen) if why is None]

    @property
    def is_boundary(self) -> bool:
        return not self.prunable


@dataclass
class Boundary:
    where: str
    reason: str


@dataclass
class Analysis:
    model: onnx.ModelProto
    index: GraphIndex
    elements: ElementTable
    members: list[Member]
    fixes: list[ShapeFix]
    groups: list[ChannelGroup]
    boundaries: list[Boundary]
    tensor_channels: dict[str, TensorChannels] = field(repr=False, default_factory=dict)

    def group(self, key: int | str) -> ChannelGroup:
        for g in self.groups:
            if g.id == key or g.name == key:
                return g
        raise KeyError(key)

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.is_boundary]

    def channel_of_root(self, group: ChannelGroup) -> dict[int, int]:
        """Element root -> the group's channel index: how a layout position finds its channel."""
        find = self.elements.find
        return {find(int(ch[0])): j for j, ch in enumerate(group.channels)}


class AnalysisContext:
    """What rules see: layouts of tensors, and the calls that record members, unions and fixes."""

    def __init__(self, model: onnx.ModelProto, prune_embedding: bool = False):
        self.index = GraphIndex(model)
        self.prune_embedding = prune_embedding
        self.consumed: set[str] = set()  # nodes whose output deliberately carries none of the input channels
        self.head_elements: set[int] = set()  # elements a reshape split into attention heads
        self.opset = opset_version(model)
        self.elements = ElementTable()
        self.members: list[Member] = []
        self.fixes: list[ShapeFix] = []
        self.boundaries: list[Boundary] = []
        self.channels: dict[str, TensorChannels] = {}
        self.claimed: set[tuple[str, int]] = set()

    # -- layouts
    def info(self, tensor: str) -> TensorChannels | None:
        return self.channels.get(tensor) if tensor else None

    def set_info(self, tensor: str, info: TensorChannels) -> None:
        if tensor:
            self.channels[tensor] = info

    def new_space(self, width: int, node) -> np.ndarray:
        return self.elements.new_space(width, node.name, node.output[0])

    def channels_of(self, tensor: str, axis: int) -> TensorChannels | None:
        """The tensor's layout; a fresh frozen one when nothing upstream explained its channels."""
        info = self.info(tensor)
        if info is not None:
            return info
        shape = self.index.shape(tensor)
        if shape is None or axis >= len(shape):
            return None
        producer = self.index.producer.get(tensor)
        if producer is None:
            reason = f"graph input '{tensor}'" if tensor in self.index.input_names else f"constant '{tensor}'"
        else:
            reason = f"produced by {producer.op_type} '{producer.name}', which the analysis does not follow"
        layout = self.elements.new_space(int(shape[axis]), None, tensor)
        self.elements.freeze(layout, reason)
        self.boundaries.append(Boundary(tensor, reason))
        info = TensorChannels(axis, layout)
        self.channels[tensor] = info
        return info

    # -- records
    def member(self, initializer, axis, layout, role, node, input_index, reads=None) -> None:
        for m in self.members:
            if m.initializer == initializer and m.axis == axis:
                # A shared constant: both users must keep the same positions.
                self.elements.union_layouts(m.layout, layout)
        self.members.append(Member(initializer, axis, np.asarray(layout, dtype=np.int64), role, node.name, reads))
        self.claimed.add((node.name, input_index))

    def add_boundary(self, where: str, reason: str) -> None:
        self.boundaries.append(Boundary(where, reason))

    def fix(self, fix: ShapeFix) -> None:
        self.fixes.append(fix)

    def attrs(self, node) -> dict:
        return attrs_of(node)

    def unsupported(self, node, why: str) -> None:
        reason = f"{node.op_type} '{node.name}': {why}"
        for name in node.input:
            info = self.info(name)
            if info is not None:
                self.elements.freeze(info.layout, reason)
        for name in node.output:
            self.channels.pop(name, None)
        self.boundaries.append(Boundary(node.name, reason))


def analyze(model: onnx.ModelProto, prune_embedding: bool = False) -> Analysis:
    """Analyse a normalised model (see acc.passes.importer.import_model).

    `prune_embedding`: let the channels that LayerNorms (or a mean over the channels) take their
    statistics over, a transformer's residual stream, be pruned; frozen otherwise."""
    ctx = AnalysisContext(model, prune_embedding)
    floating = {i.name for i in model.graph.input if i.type.tensor_type.elem_type in _FLOAT_TYPES}
    for name in ctx.index.input_names:
        shape = ctx.index.shape(name)
        # Integer inputs (token ids) hold indices, not channels.
        if shape is not None and len(shape) >= 2 and name in floating:
            ctx.channels_of(name, axis=input_channel_axis(ctx.index, name))
    for node in ctx.index.topological_nodes():
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            if any(ctx.info(n) is not None for n in node.input):
                ctx.unsupported(node, "op not in the propagation table")
            continue
        had_channels = any(ctx.info(n) is not None for n in node.input if n)
        boundaries = len(ctx.boundaries)
        rule(ctx, node)
        lost = not any(ctx.info(o) is not None for o in node.output if o)
        if had_channels and lost and len(ctx.boundaries) == boundaries and node.name not in ctx.consumed:
            # A rule that neither mapped nor froze the channels: never let them vanish silently.
            ctx.unsupported(node, "the analysis does not map its channels to its outputs")
    for name in ctx.index.output_names:
        info = ctx.info(name)
        if info is not None:
            reason = f"reaches graph output '{name}'"
            ctx.elements.freeze(info.layout, reason)
            ctx.boundaries.append(Boundary(name, reason))
    _freeze_unclaimed_constants(ctx)
    groups = _build_groups(ctx)
    return Analysis(model, ctx.index, ctx.elements, ctx.members, ctx.fixes, groups, ctx.boundaries, ctx.channels)


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}

# Ops an image input may pass through (normalisation, casts) before an NHWC model's Transpose.
_PREPROCESSING_OPS = {"Sub", "Add", "Mul", "Div", "Cast", "Identity"}


def input_channel_axis(index: GraphIndex, name: str) -> int:
    """The channel axis of a graph input: 3 for an NHWC image (its shape says so, or it reaches a
    Transpose to NCHW through preprocessing ops), else 1. The input stays whole either way; the
    axis only lets the channels be followed into the first Conv."""
    shape = index.shape(name) or ()
    if len(shape) != 4:
        return 1
    tensor = name
    for _ in range(8):
        users = index.consumers.get(tensor, [])
        if len(users) != 1:
            break
        node = users[0][0]
        if node.op_type == "Transpose":
            if list(attrs_of(node).get("perm", [])) == [0, 3, 1, 2]:
                return 3
            break
        if node.op_type not in _PREPROCESSING_OPS or not node.output:
            break
        tensor = node.output[0]
    return 3 if infer_layout(list(shape)) == "NHWC" else 1


def _freeze_unclaimed_constants(ctx: AnalysisContext) -> None:
    """A sliced constant must not also feed a node that did not ask for the slicing."""
    by_name: dict[str, list[Member]] = {}
    for m in ctx.members:
        by_name.setdefault(m.initializer, []).append(m)
    for name, members in by_name.items():
        for node, i in ctx.index.consumers.get(name, []):
            if (node.name, i) not in ctx.claimed:
                reason = f"constant '{name}' is also read by {node.op_type} '{node.name}'"
                for m in members:
                    ctx.elements.freeze(m.layout, reason)
                ctx.boundaries.append(Boundary(name, reason))
                break


def _build_groups(ctx: AnalysisContext) -> list[ChannelGroup]:
    el = ctx.elements
    n = len(el.parent)
    if n == 0:
        return []
    roots = np.array([el.find(e) for e in range(n)], dtype=np.int64)
    # Spaces joined by any shared channel form one group.
    space_parent = list(range(len(el.spaces)))

    def space_find(s):
        while space_parent[s] != s:
            space_parent[s] = space_parent[space_parent[s]]
            s = space_parent[s]
        return s

    space_of = np.array([el.space_of(e) for e in range(n)], dtype=np.int64)
    for e in range(n):
        a, b = space_find(int(space_of[e])), space_find(int(space_of[roots[e]]))
        if a != b:
            space_parent[max(a, b)] = min(a, b)
    group_of_space = [space_find(s) for s in range(len(el.spaces))]

    members_of: dict[int, list[int]] = {}
    for mi, m in enumerate(ctx.members):
        for gs in {group_of_space[int(space_of[e])] for e in m.layout.tolist() if e >= 0}:
            members_of.setdefault(gs, []).append(mi)

    head_roots = {el.find(e) for e in ctx.head_elements}
    frozen_root: dict[int, str] = {}
    for e, why in el.frozen.items():
        frozen_root.setdefault(int(roots[e]), why)

    groups = []
    for gs in sorted(members_of):
        spaces = [s for s in range(len(el.spaces)) if group_of_space[s] == gs]
        elems = np.concatenate([np.arange(el.spaces[s].start, el.spaces[s].start + el.spaces[s].width) for s in spaces])
        channel_roots = sorted(set(roots[elems].tolist()))
        channels = [elems[roots[elems] == r] for r in channel_roots]
        producers = [el.spaces[s].node for s in spaces if el.spaces[s].node]
        name = producers[0] if producers else el.spaces[spaces[0]].tensor
        groups.append(
            ChannelGroup(
                id=len(groups),
                name=name,
                channels=channels,
                frozen=[frozen_root.get(r) for r in channel_roots],
                members=members_of[gs],
                producers=producers,
                unit="head" if head_roots.intersection(channel_roots) else "channel",
            )
        )
    return groups
