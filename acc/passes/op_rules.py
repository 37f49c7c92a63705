"""How channels pass through each ONNX op: one entry per op type in RULES.

A rule reads the channel layouts of a node's inputs from the context, records the members
(initializer axes that follow a layout), the unions (channels that must go together) and the shape
fixes, and sets the layouts of the node's outputs. A rule that meets a case it cannot map calls
`ctx.unsupported(node, why)`: the inputs' channels are frozen (a boundary) and the outputs carry no
layout, so the rest of the graph is still analysed. Adding an op is one entry here and one test.
"""

from __future__ import annotations

import numpy as np

from acc.passes.channels import (
    BIAS,
    BN_MEAN,
    BN_SCALE,
    BN_SHIFT,
    BN_VAR,
    CONST,
    DW_WEIGHT,
    IN_WEIGHT,
    OUT_WEIGHT,
    ShapeFix,
    TensorChannels,
)

RULES: dict = {}


def rule(*op_types):
    def register(fn):
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


# Ops that map each channel to itself, elementwise, with no constant of their own that
# depends on the channel count.
PASS_THROUGH = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Erf", "Gelu", "Mish", "ThresholdedRelu", "Exp", "Log", "Sqrt", "Neg",
    "Abs", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Clip", "Identity",
    "Dropout", "Cast", "CastLike", "Shrink",
)
# Pooling treats axis 1 as channels and the rest as spatial: channel-preserving only there.
POOLING = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu")


@rule(*PASS_THROUGH, *POOLING)
def pass_through(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    if node.op_type in POOLING and x.axis != 1:
        return ctx.unsupported(node, "it pools over the axis that carries the channels")
    # Extra outputs (MaxPool indices, Dropout mask) carry positions, not channels we can follow.
    for extra in node.output[1:]:
        if extra and ctx.index.consumers.get(extra):
            return ctx.unsupported(node, f"its output '{extra}' is used")
    ctx.set_info(node.output[0], x)


def _const_member(ctx, node, input_index, layout, out_rank, axis, role):
    """Record a per-channel constant input; returns False when its shape cannot follow `layout`."""
    name = node.input[input_index]
    shape = ctx.index.array(name).shape
    aligned = axis - (out_rank - len(shape))
    if aligned < 0 or shape[aligned] == 1:
        return True  # broadcast along channels: nothing to slice
    if shape[aligned] != len(layout):
        return False
    ctx.member(name, aligned, layout, role, node, input_index)
    return True


@rule(*ELEMENTWISE)
def elementwise(ctx, node):
    out_shape = ctx.index.shape(node.output[0])
    if out_shape is None:
        return ctx.unsupported(node, "its output shape is unknown")
    rank = len(out_shape)
    ref = None
    for name in node.input:
        info = ctx.info(name) if name else None
        if info is not None:
            axis = info.axis + rank - len(ctx.index.shape(name) or ())
            if out_shape[axis] == info.width:
                ref = (axis, info.layout)
                break
    if ref is None:
        if any(ctx.info(n) is not None for n in node.input if n):
            return ctx.unsupported(node, "its output does not carry the channels of its inputs")
        return
    axis, layout = ref
    width = len(layout)
    for i, name in enumerate(node.input):
        if not name:
            continue
        if ctx.index.is_constant(name):
            if not _const_member(ctx, node, i, layout, rank, axis, CONST):
                return ctx.unsupported(node, f"constant '{name}' does not broadcast per channel")
            continue
        shape = ctx.index.shape(name)
        if shape is None:
            return ctx.unsupported(node, f"the shape of '{name}' is unknown")
        aligned = axis - (rank - len(shape))
        if aligned < 0 or shape[aligned] == 1 and width != 1:
            continue  # broadcasts along channels
        info = ctx.info(name)
        if info is None or info.axis != aligned or info.width != width:
            return ctx.unsupported(node, f"input '{name}' has channels the analysis cannot follow")
        ctx.elements.union_layouts(layout, info.layout)
    ctx.set_info(node.output[0], TensorChannels(axis, layout))


@rule("Conv")
def conv(ctx, node):
    w_name = node.input[1]
    if not ctx.index.is_constant(w_name):
        return ctx.unsupported(node, "its weight is not a constant")
    x = ctx.channels_of(node.input[0], axis=1)
    w = ctx.index.array(w_name)
    cout, cin_per_group = int(w.shape[0]), int(w.shape[1])
    group = int(ctx.attrs(node).get("group", 1))
    if x is None or x.axis != 1 or x.width != cin_per_group * group:
        return ctx.unsupported(node, "its input channels do not match its weight")
    if group == 1:
        out = ctx.new_space(cout, node)
        ctx.member(w_name, 0, out, OUT_WEIGHT, node, 1)
        ctx.member(w_name, 1, x.layout, IN_WEIGHT, node, 1, reads=node.input[0])
    elif cin_per_group == 1 and cout == group:
        # Depthwise: channel c in, channel c out. The group count follows the width.
        out = x.layout
        ctx.member(w_name, 0, out, DW_WEIGHT, node, 1, reads=node.input[0])
        ctx.fix(ShapeFix("conv_group", node.name, [out]))
    else:
        # Grouped: every group must lose the same positions to keep equal group sizes,
        # so position k is one channel across all groups, on both sides.
        cout_per_group = cout // group
        groups_in = x.layout.reshape(group, cin_per_group)
        for g in range(1, group):
            ctx.elements.union_layouts(groups_in[0], groups_in[g])
        out = ctx.new_space(cout, node)
        groups_out = out.reshape(group, cout_per_group)
        for g in range(1, group):
            ctx.elements.union_layouts(groups_out[0], groups_out[g])
        ctx.member(w_name, 0, out, OUT_WEIGHT, node, 1)
        ctx.member(w_name, 1, groups_in[0], IN_WEIGHT, node, 1, reads=node.input[0])
    if len(node.input) > 2 and node.input[2]:
        if not ctx.index.is_constant(node.input[2]):
            return ctx.unsupported(node, "its bias is not a constant")
        ctx.member(node.input[2], 0, out, BIAS, node, 2)
    ctx.set_info(node.output[0], TensorChannels(1, out))


@rule("ConvTranspose")
def conv_transpose(ctx, node):
    w_name = node.input[1]
    if not ctx.index.is_constant(w_name) or int(ctx.attrs(node).get("group", 1)) != 1:
        return ctx.unsupported(node, "only ungrouped ConvTranspose with a constant weight is mapped")
    x = ctx.channels_of(node.input[0], axis=1)
    w = ctx.index.array(w_name)
    if x is None or x.axis != 1 or x.width != w.shape[0]:
        return ctx.unsupported(node, "its input channels do not match its weight")
    if "output_shape" in ctx.attrs(node):
        pass  # spatial only: unaffected by channel counts
    out = ctx.new_space(int(w.shape[1]), node)
    ctx.member(w_name, 0, x.layout, IN_WEIGHT, node, 1, reads=node.input[0])
    ctx.member(w_name, 1, out, OUT_WEIGHT, node, 1)
    if len(node.input) > 2 and node.input[2]:
        ctx.member(node.input[2], 0, out, BIAS, node, 2)
    ctx.set_info(node.output[0], TensorChannels(1, out))


@rule("Gemm")
def gemm(ctx, node):
    a = ctx.attrs(node)
    b_name = node.input[1]
    if a.get("transA", 0) or not ctx.index.is_constant(b_name) or ctx.index.is_constant(node.input[0]):
        return ctx.unsupported(node, "only x @ W with a constant W is mapped")
    x = ctx.channels_of(node.input[0], axis=1)
    b = ctx.index.array(b_name)
    k_axis, n_axis = (1, 0) if a.get("transB", 0) else (0, 1)
    if x is None or x.axis != 1 or x.width != b.shape[k_axis]:
        return ctx.unsupported(node, "its input features do not match its weight")
    out = ctx.new_space(int(b.shape[n_axis]), node)
    ctx.member(b_name, k_axis, x.layout, IN_WEIGHT, node, 1, reads=node.input[0])
    ctx.member(b_name, n_axis, out, OUT_WEIGHT, node, 1)
    if len(node.input) > 2 and node.input[2]:
        if not ctx.index.is_constant(node.input[2]):
            return ctx.unsupported(node, "its bias is not a constant")
        c = ctx.index.array(node.input[2])
        if c.ndim >= 1 and c.shape[-1] == len(out):
            ctx.member(node.input[2], c.ndim - 1, out, BIAS, node, 2)
        elif c.size != 1:
            return ctx.unsupported(node, "its bias does not broadcast per output feature")
    ctx.set_info(node.output[0], TensorChannels(1, out))


@rule("MatMul")
def matmul(ctx, node):
    w_name = node.input[1]
    shape = ctx.index.shape(node.input[0])
    if not ctx.index.is_constant(w_name) and not ctx.index.is_constant(node.input[0]):
        return _activation_matmul(ctx, node)
    if not ctx.index.is_constant(w_name) or ctx.index.array(w_name).ndim != 2 or shape is None:
        return ctx.unsupported(node, "only x @ W with a constant 2-D W is mapped")
    w = ctx.index.array(w_name)
    x = ctx.channels_of(node.input[0], axis=len(shape) - 1)
    if x is None or x.axis != len(shape) - 1 or x.width != w.shape[0]:
        return ctx.unsupported(node, "its input features are not on the last axis")
    out = ctx.new_space(int(w.shape[1]), node)
    ctx.member(w_name, 0, x.layout, IN_WEIGHT, node, 1, reads=node.input[0])
    ctx.member(w_name, 1, out, OUT_WEIGHT, node, 1)
    ctx.set_info(node.output[0], TensorChannels(len(shape) - 1, out))


def _activation_matmul(ctx, node):
    """A @ B of two computed tensors, as attention computes q @ k^T and p @ v per head.

    Channels on a batch axis (the heads) pass through, each slice computed on its own: removing
    head h removes slice h of both operands and of the result. Channels on the rows, columns or the
    contracted axis would mix with the other operand and are not mapped.
    """
    names = list(node.input[:2])
    shapes = [ctx.index.shape(n) for n in names]
    out_shape = ctx.index.shape(node.output[0])
    infos = [ctx.info(n) for n in names]
    if all(i is None for i in infos):
        return
    if out_shape is None or any(s is None or len(s) < 2 for s in shapes):
        return ctx.unsupported(node, "its operand shapes are unknown or not matrices")
    rank = len(out_shape)
    placed = []
    for name, shape, info in zip(names, shapes, infos):
        if info is None:
            continue
        axis = info.axis + rank - len(shape)
        if axis >= rank - 2 or info.axis >= len(shape) - 2:
            return ctx.unsupported(node, f"the channels of '{name}' are on a matrix axis of an activation @ activation product")
        placed.append((axis, info))
    axis, ref = placed[0]
    for other_axis, info in placed[1:]:
        if other_axis != axis or info.width != ref.width:
            return ctx.unsupported(node, "its operands carry channels on different batch axes")
        ctx.elements.union_layouts(ref.layout, info.layout)
    for name, shape, info in zip(names, shapes, infos):
        aligned = axis - (rank - len(shape))
        if info is None and aligned >= 0 and shape[aligned] != 1:
            return ctx.unsupported(node, f"operand '{name}' has slices along the channel axis the analysis cannot follow")
    ctx.set_info(node.output[0], TensorChannels(axis, ref.layout))


def _channel_statistics(ctx, node, layout, axis):
    """Record an op that averages across the channels (LayerNormalization, ReduceMean): removing a
    channel changes every output. The rewrite keeps the op (it adapts to the narrower axis); the
    masked model averages over the kept channels only. Frozen unless the residual stream is to be
    pruned (`--prune-embedding`)."""
    if not ctx.prune_embedding:
        reason = (f"{node.op_type} '{node.name}' takes statistics across these channels (a residual stream); "
                  "prune them with --prune-embedding")
        ctx.elements.freeze(layout, reason)
        ctx.add_boundary(node.name, reason)
    ctx.fix(ShapeFix("channel_statistics", node.name, [layout], {"axis": axis}))


@rule("LayerNormalization")
def layer_norm(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    rank = len(ctx.index.shape(node.input[0]) or ())
    if any(o and ctx.index.consumers.get(o) for o in node.output[1:]):
        return ctx.unsupported(node, "its mean or inverse-deviation outputs are used")
    axis = int(ctx.attrs(node).get("axis", -1)) % max(rank, 1)
    if x.axis < axis:
        ctx.set_info(node.output[0], x)  # the channels are not normalised over: each stays itself
        return
    if axis != rank - 1 or x.axis != rank - 1:
        return ctx.unsupported(node, "it normalises over the channels together with other axes")
    for i, role in ((1, BN_SCALE), (2, BN_SHIFT)):
        if i >= len(node.input) or not node.input[i]:
            continue
        if not ctx.index.is_constant(node.input[i]):
            return ctx.unsupported(node, f"its parameter '{node.input[i]}' is not a constant")
        if not _const_member(ctx, node, i, x.layout, rank, x.axis, role):
            return ctx.unsupported(node, f"its parameter '{node.input[i]}' does not follow the channels")
    _channel_statistics(ctx, node, x.layout, x.axis)
    ctx.set_info(node.output[0], x)


@rule("Gather")
def gather(ctx, node):
    data, indices = node.input[0], node.input[1]
    x = ctx.info(data)
    shape, idx_shape = ctx.index.shape(data), ctx.index.shape(indices)
    axis = int(ctx.attrs(node).get("axis", 0))
    if x is None:
        if (shape is not None and len(shape) == 2 and axis % 2 == 0 and ctx.index.is_constant(data)
                and not ctx.index.is_constant(indices) and idx_shape is not None and ctx.info(indices) is None):
            # An embedding table: its columns are the channels of the looked-up vectors.
            out = ctx.new_space(int(shape[1]), node)
            ctx.member(data, 1, out, OUT_WEIGHT, node, 0)
            ctx.set_info(node.output[0], TensorChannels(len(idx_shape), out))
        elif ctx.info(indices) is not None:
            return ctx.unsupported(node, "it uses channel values as indices")
        return
    if shape is None or idx_shape is None or ctx.info(indices) is not None:
        return ctx.unsupported(node, "its indices are unknown or carry channels")
    axis %= len(shape)
    if axis == x.axis:
        return ctx.unsupported(node, "it gathers along the channels")
    moved = x.axis if x.axis < axis else x.axis - 1 + len(idx_shape)
    ctx.set_info(node.output[0], TensorChannels(moved, x.layout))


@rule("BatchNormalization", "InstanceNormalization")
def normalization(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    if any(o and ctx.index.consumers.get(o) for o in node.output[1:]):
        return ctx.unsupported(node, "its running-statistics outputs are used")
    if x.axis != 1:
        return ctx.unsupported(node, "channels are not on axis 1")
    roles = (BN_SCALE, BN_SHIFT, BN_MEAN, BN_VAR)
    for i, role in zip(range(1, len(node.input)), roles):
        if not ctx.index.is_constant(node.input[i]):
            return ctx.unsupported(node, f"its parameter '{node.input[i]}' is not a constant")
        ctx.member(node.input[i], 0, x.layout, role, node, i)
    ctx.set_info(node.output[0], x)


@rule("Transpose")
def transpose(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    shape = ctx.index.shape(node.input[0])
    perm = ctx.attrs(node).get("perm") or list(reversed(range(len(shape or ()))))
    ctx.set_info(node.output[0], TensorChannels(list(perm).index(x.axis), x.layout))


def _merged_axis(in_shape, out_shape, axis, width):
    """Where the channel axis lands after a reshape, and how many features each channel owns.

    Valid when the channel dim is kept as is (squeeze/unsqueeze of unit dims) or becomes the
    outermost factor of a merged dim (flatten of C,H,W into features). None otherwise.
    """
    prefix = int(np.prod(in_shape[:axis], dtype=np.int64))
    for b in range(len(out_shape)):
        if int(np.prod(out_shape[:b], dtype=np.int64)) != prefix:
            continue
        if out_shape[b] % width:
            continue
        repeat = out_shape[b] // width
        inner = 1
        for k in range(axis + 1, len(in_shape) + 1):
            if inner == repeat:
                return b, repeat
            if k == len(in_shape):
                break
            inner *= in_shape[k]
    return None


def _unit_axes_moved(ctx, node, rank, axis):
    """(new channel axis, 1) after Squeeze/Unsqueeze by its axes; None when not known or when the
    channel axis itself is squeezed."""
    if len(node.input) > 1 and node.input[1]:
        if not ctx.index.is_constant(node.input[1]):
            return None
        axes = [int(a) for a in ctx.index.array(node.input[1]).reshape(-1)]
    else:
        axes = list(ctx.attrs(node).get("axes", []))
    if node.op_type == "Squeeze":
        if not axes:
            shape = ctx.index.shape(node.input[0])
            axes = [i for i, d in enumerate(shape) if d == 1]
        axes = [a % rank for a in axes]
        return None if axis in axes else (axis - sum(1 for a in axes if a < axis), 1)
    out_rank = rank + len(axes)
    inserted = sorted(a % out_rank for a in axes)
    kept = [i for i in range(out_rank) if i not in inserted]
    return kept[axis], 1


def _single_head_split(ctx, node, in_shape, out_shape, x) -> bool:
    """[.., C] -> [.., 1, C] read as one attention head rather than an unsqueeze: every consumer is
    a Transpose that moves the unit axis to a batch axis and the channels into the last two (the
    head split of a model pruned to one head: it keeps the head group it had before)."""
    if len(out_shape) != len(in_shape) + 1 or x.axis != len(in_shape) - 1 or tuple(out_shape[-2:]) != (1, x.width):
        return False
    users = ctx.index.consumers.get(node.output[0], [])
    rank = len(out_shape)
    for user, _ in users:
        perm = list(ctx.attrs(user).get("perm", [])) if user.op_type == "Transpose" else []
        if len(perm) != rank or perm.index(rank - 2) >= rank - 2 or perm.index(rank - 1) < rank - 2:
            return False
    return bool(users)


def _split_axis(in_shape, out_shape, axis, width, single=False):
    """How a reshape splits the channel axis into consecutive dims, the dims before it unchanged in
    product: (heads axis, outer, heads, inner) for [heads, inner] (attention's head split) or
    [outer, heads, inner] (a fused q/k/v projection split into [3, heads, head_dim], as timm and
    Hugging Face write it). None for any other reshape of the channels.

    Whichever factor is taken for the heads, the unit removed is one position of it across all the
    other factors, so the choice only decides what can be pruned, never what is correct."""
    prefix = int(np.prod(in_shape[:axis], dtype=np.int64))
    for b in range(len(out_shape) - 1):
        if int(np.prod(out_shape[:b], dtype=np.int64)) != prefix:
            continue
        factors = []
        for e in range(b, len(out_shape)):
            factors.append(int(out_shape[e]))
            if int(np.prod(factors)) >= width:
                break
        if int(np.prod(factors)) != width:
            continue
        if len(factors) == 2 and (1 < factors[0] < width or single and factors[0] == 1):
            return b, 1, factors[0], factors[1]
        if len(factors) == 3 and 1 <= factors[1] < width:
            return b + 1, factors[0], factors[1], factors[2]
    return None


def _split_heads(ctx, node, x, axis, outer, heads, inner):
    """The channel axis becomes [outer, heads, inner]: a head is removed whole, so the positions of
    one head (in every outer part) are one channel, and the head axis carries the channels."""
    per_head = x.layout.reshape(outer, heads, inner).transpose(1, 0, 2).reshape(heads, outer * inner)
    for d in range(1, outer * inner):
        ctx.elements.union_layouts(per_head[:, 0], per_head[:, d])
    layout = per_head[:, 0].copy()
    ctx.head_elements.update(int(e) for e in layout.tolist() if e >= 0)
    if not ctx.index.is_constant(node.input[1]):
        return ctx.unsupported(node, "its target shape is not a constant")
    target = ctx.index.array(node.input[1])
    if target[axis] == 0:
        return ctx.unsupported(node, "a 0 in its target copies a dim the heads split")
    if int(target[axis]) > 0:
        ctx.fix(ShapeFix("reshape_dim", node.name, [layout], {"input": 1, "index": axis}))
    ctx.set_info(node.output[0], TensorChannels(axis, layout))


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    in_shape, out_shape = ctx.index.shape(node.input[0]), ctx.index.shape(node.output[0])
    if in_shape is None or out_shape is None:
        return ctx.unsupported(node, "its shapes are unknown")
    placed = _merged_axis(in_shape, out_shape, x.axis, x.width)
    if node.op_type in ("Squeeze", "Unsqueeze"):
        # The axes say exactly where the channels go (shapes alone cannot when they are all 1s).
        placed = _unit_axes_moved(ctx, node, len(in_shape), x.axis)
        if placed is None:
            return ctx.unsupported(node, "its axes are not constant, or it squeezes the channel axis")
    if node.op_type == "Reshape" and (placed is None or _single_head_split(ctx, node, in_shape, out_shape, x)):
        split = _split_axis(in_shape, out_shape, x.axis, x.width, single=placed is not None)
        if split is not None:
            return _split_heads(ctx, node, x, *split)
    if placed is None:
        return ctx.unsupported(node, f"it reshapes the channel axis ({in_shape} -> {out_shape})")
    axis, repeat = placed
    layout = np.repeat(x.layout, repeat)
    if node.op_type == "Reshape":
        if not ctx.index.is_constant(node.input[1]):
            return ctx.unsupported(node, "its target shape is not a constant")
        target = ctx.index.array(node.input[1])
        if target[axis] > 0:
            ctx.fix(ShapeFix("reshape_dim", node.name, [layout], {"input": 1, "index": axis}))
        elif target[axis] == 0 and axis != x.axis:
            return ctx.unsupported(node, "a 0 in its target copies a dim the channels moved away from")
    ctx.set_info(node.output[0], TensorChannels(axis, layout))


@rule("Concat")
def concat(ctx, node):
    out_shape = ctx.index.shape(node.output[0])
    infos = [ctx.info(n) for n in node.input]
    known = [i for i in infos if i is not None]
    if not known:
        return
    if out_shape is None:
        return ctx.unsupported(node, "its output shape is unknown")
    axis = int(ctx.attrs(node)["axis"]) % len(out_shape)
    channel_axis = known[0].axis
    if any(i.axis != channel_axis for i in known):
        return ctx.unsupported(node, "its inputs carry channels on different axes")
    if axis == channel_axis:
        parts = []
        for name, info in zip(node.input, infos):
            info = info or ctx.channels_of(name, axis=axis)
            if info is None:
                return ctx.unsupported(node, f"the shape of '{name}' is unknown")
            parts.append(info.layout)
        ctx.set_info(node.output[0], TensorChannels(axis, np.concatenate(parts)))
        return
    for info in known[1:]:
        if info.width != known[0].width:
            return ctx.unsupported(node, "its inputs have different channel counts")
        ctx.elements.union_layouts(known[0].layout, info.layout)
    for i, (name, info) in enumerate(zip(node.input, infos)):
        # A constant joined along another axis (a class token) is sliced with the channels.
        if info is None and not (ctx.index.is_constant(name) and ctx.index.array(name).ndim == len(out_shape)
                                 and _const_member(ctx, node, i, known[0].layout, len(out_shape), channel_axis, CONST)):
            return ctx.unsupported(node, "some inputs have channels the analysis cannot follow")
    ctx.set_info(node.output[0], known[0])


@rule("Split")
def split(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    rank = len(ctx.index.shape(node.input[0]) or ())
    a = ctx.attrs(node)
    axis = int(a.get("axis", 0)) % max(rank, 1)
    outputs = list(node.output)
    if axis != x.axis:
        for o in outputs:
            ctx.set_info(o, x)
        return
    if len(node.input) > 1 and node.input[1]:
        if not ctx.index.is_constant(node.input[1]):
            return ctx.unsupported(node, "its split sizes are not constant")
        sizes, source = [int(s) for s in ctx.index.array(node.input[1])], {"input": 1}
    elif "split" in a:
        sizes, source = [int(s) for s in a["split"]], {"attribute": "split"}
    else:
        sizes, source = None, None
    if sizes is None:
        # An equal split must stay equal: position k of every part is one channel.
        part = -(-x.width // len(outputs))
        if part * len(outputs) != x.width:
            return ctx.unsupported(node, "it splits unevenly without sizes")
        sizes = [part] * len(outputs)
        parts = np.split(x.layout, len(outputs))
        for p in parts[1:]:
            ctx.elements.union_layouts(parts[0], p)
    bounds = np.cumsum([0] + sizes)
    layouts = [x.layout[bounds[i]: bounds[i + 1]] for i in range(len(outputs))]
    if source is not None:
        ctx.fix(ShapeFix("split_sizes", node.name, layouts, source))
    for o, layout in zip(outputs, layouts):
        ctx.set_info(o, TensorChannels(axis, layout))


@rule("Slice")
def slice_(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    names = list(node.input) + [""] * (5 - len(node.input))
    if not all(ctx.index.is_constant(n) for n in names[1:3]) or any(n and not ctx.index.is_constant(n) for n in names[3:]):
        return ctx.unsupported(node, "its bounds are not constant")
    rank = len(ctx.index.shape(node.input[0]) or ())
    starts, ends = ctx.index.array(names[1]), ctx.index.array(names[2])
    axes = ctx.index.array(names[3]) if names[3] else np.arange(len(starts))
    steps = ctx.index.array(names[4]) if names[4] else np.ones(len(starts), dtype=np.int64)
    axes = [int(ax) % rank for ax in axes]
    if x.axis not in axes:
        ctx.set_info(node.output[0], x)
        return
    i = axes.index(x.axis)
    if int(steps[i]) != 1:
        return ctx.unsupported(node, "it slices channels with a step")
    start, stop, _ = slice(int(starts[i]), int(ends[i])).indices(x.width)
    ctx.fix(ShapeFix("slice_bounds", node.name, [x.layout], {"position": i, "start": start, "stop": stop}))
    ctx.set_info(node.output[0], TensorChannels(x.axis, x.layout[start:max(start, stop)]))


@rule("Pad")
def pad(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    rank = len(ctx.index.shape(node.input[0]) or ())
    mode = ctx.attrs(node).get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    names = list(node.input) + [""] * (4 - len(node.input))
    if names[1] and not ctx.index.is_constant(names[1]):
        return ctx.unsupported(node, "its pads are not constant")
    pads = ctx.index.array(names[1]) if names[1] else np.array(ctx.attrs(node).get("pads", []))
    axes = [int(a) % rank for a in ctx.index.array(names[3])] if names[3] else list(range(rank))
    if x.axis not in axes:
        ctx.set_info(node.output[0], x)
        return
    i = axes.index(x.axis)
    before, after = int(pads[i]), int(pads[i + len(axes)])
    if before == 0 and after == 0:
        ctx.set_info(node.output[0], x)
        return
    if mode != "constant" or before < 0 or after < 0:
        return ctx.unsupported(node, "it pads channels other than with constants")
    none = np.full(1, -1, dtype=np.int64)
    layout = np.concatenate([np.repeat(none, before), x.layout, np.repeat(none, after)])
    ctx.set_info(node.output[0], TensorChannels(x.axis, layout))


@rule("Resize", "Upsample")
def resize(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    inputs = list(node.input)
    scales_at = 1 if node.op_type == "Upsample" else 2
    if len(inputs) > scales_at and inputs[scales_at]:
        scales = ctx.index.array(inputs[scales_at]) if ctx.index.is_constant(inputs[scales_at]) else None
        if scales is not None and scales.size and float(scales[x.axis]) != 1.0:
            return ctx.unsupported(node, "it scales the channel axis")
    if len(inputs) > 3 and inputs[3]:
        if not ctx.index.is_constant(inputs[3]):
            return ctx.unsupported(node, "its sizes are not constant")
        ctx.fix(ShapeFix("resize_sizes", node.name, [x.layout], {"input": 3, "index": x.axis}))
    ctx.set_info(node.output[0], x)


REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSumExp", "ReduceSumSquare")


@rule(*REDUCE)
def reduce(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    rank = len(ctx.index.shape(node.input[0]) or ())
    a = ctx.attrs(node)
    if "axes" in a:
        axes = list(a["axes"])
    elif len(node.input) > 1 and node.input[1]:
        if not ctx.index.is_constant(node.input[1]):
            return ctx.unsupported(node, "its axes are not constant")
        axes = [int(v) for v in ctx.index.array(node.input[1])]
    else:
        axes = [] if a.get("noop_with_empty_axes", 0) else list(range(rank))
    axes = [ax % rank for ax in axes]
    if x.axis in axes and node.op_type == "ReduceMean" and axes == [x.axis] and a.get("keepdims", 1):
        # A mean over the channels (LayerNorm decomposed): the output holds no channels.
        _channel_statistics(ctx, node, x.layout, x.axis)
        ctx.consumed.add(node.name)
        return
    if x.axis in axes:
        return ctx.unsupported(node, "it reduces over channels")
    keep = a.get("keepdims", 1)
    axis = x.axis if keep else x.axis - sum(1 for ax in axes if ax < x.axis)
    ctx.set_info(node.output[0], TensorChannels(axis, x.layout))


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(ctx, node):
    x = ctx.info(node.input[0])
    if x is None:
        return
    rank = len(ctx.index.shape(node.input[0]) or ())
    default = -1 if ctx.opset >= 13 else 1
    axis = int(ctx.attrs(node).get("axis", default)) % rank
    coupled = x.axis == axis if ctx.opset >= 13 else x.axis >= axis
    if coupled:
        return ctx.unsupported(node, "it normalises across channels")
    ctx.set_info(node.output[0], x)
