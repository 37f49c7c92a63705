"""Find channels that are provably dead: removing them changes no output, exactly.

A channel is dead when every weight that reads it (a consumer's input columns) either is zero or
reads a value that is provably zero. Zero values are propagated forward through the graph, per
channel position, with each op's rule for f(0): Relu(0) = 0 keeps a zero, Sigmoid(0) = 0.5 does
not, BN(0) is zero only when its shift is zero and its mean (or scale) is zero, and so on.
Channels that reach a graph output or an op the analysis does not follow are frozen and never dead.
"""

from __future__ import annotations

import numpy as np

from acc.passes.analysis import Analysis
from acc.passes.channels import IN_WEIGHT
from acc.passes.graph_index import attrs_of
from acc.passes.op_rules import REDUCE

# f(0) == 0, elementwise per channel.
ZERO_PRESERVING = {
    "Relu", "LeakyRelu", "Tanh", "Elu", "Selu", "Celu", "HardSwish", "Gelu", "Erf", "Softsign", "Mish",
    "ThresholdedRelu", "Identity", "Dropout", "Cast", "CastLike", "Neg", "Abs", "Sqrt", "Floor", "Ceil",
    "Round", "Sign", "Sin", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "GlobalLpPool", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Resize",
    "Upsample",
} | (set(REDUCE) - {"ReduceLogSumExp"})


def _weight_zero_rows(w: np.ndarray, out_axis: int, in_axis: int) -> np.ndarray:
    """[out, in] booleans: True where the whole kernel from input i to output o is zero."""
    w = np.moveaxis(w, (out_axis, in_axis), (0, 1))
    return ~np.any(w.reshape(w.shape[0], w.shape[1], -1) != 0, axis=2)


class ZeroPropagation:
    def __init__(self, analysis: Analysis):
        self.a = analysis
        self.index = analysis.index
        self.zero: dict[str, np.ndarray] = {}
        for node in self.index.topological_nodes():
            self._visit(node)

    def _layout(self, tensor):
        info = self.a.tensor_channels.get(tensor)
        return None if info is None else info.layout

    def _by_id(self, tensors) -> dict[int, bool]:
        table: dict[int, bool] = {}
        for t in tensors:
            layout, zero = self._layout(t), self.zero.get(t)
            if layout is not None and zero is not None:
                table.update(zip(layout.tolist(), zero.tolist()))
        return table

    def _const_zero(self, name, out_layout, rank, axis) -> np.ndarray:
        arr = self.index.array(name)
        aligned = axis - (rank - arr.ndim)
        if aligned < 0 or arr.shape[aligned] == 1:
            return np.full(len(out_layout), not np.any(arr))
        moved = np.moveaxis(arr, aligned, 0).reshape(arr.shape[aligned], -1)
        return ~np.any(moved != 0, axis=1)

    def _visit(self, node):
        out = node.output[0] if node.output else ""
        layout = self._layout(out)
        if layout is None:
            return
        op = node.op_type
        if op in ("Conv", "Gemm", "MatMul") and not self.index.is_constant(node.input[1]):
            zero = None  # activation @ activation (attention): not followed
        elif op in ("Conv", "Gemm", "MatMul"):
            zero = self._linear(node, layout)
        elif op in ("BatchNormalization", "InstanceNormalization"):
            zero = self._norm(node)
        elif op in ("Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min", "Sum", "Mean"):
            zero = self._elementwise(node, layout)
        elif op == "Clip":
            zero = self._mapped(node, layout) if self._clip_keeps_zero(node) else None
        elif op == "Pad":
            zero = self._mapped(node, layout, pad_zero=self._pad_value(node) == 0)
        elif op == "Concat":
            zero = self._concat(node, layout)
        elif op in ZERO_PRESERVING:
            for o in node.output:
                lay = self._layout(o)
                if lay is not None:
                    table = self._by_id([node.input[0]])
                    self.zero[o] = np.array([table.get(e, False) for e in lay.tolist()])
            return
        else:
            zero = None
        if zero is not None:
            self.zero[out] = np.asarray(zero, dtype=bool)

    def _mapped(self, node, layout, pad_zero=False):
        table = self._by_id([node.input[0]])
        return np.array([pad_zero if e < 0 else table.get(e, False) for e in layout.tolist()])

    def _linear(self, node, layout):
        w_name = node.input[1]
        w = self.index.array(w_name)
        x = node.input[0]
        in_zero = self.zero.get(x)
        if node.op_type == "Conv":
            in_width = w.shape[1] * int(attrs_of(node).get("group", 1))
        elif node.op_type == "Gemm" and attrs_of(node).get("transB", 0):
            in_width = w.shape[1]
        else:
            in_width = w.shape[0]  # MatMul and Gemm hold W as [in, out]
        in_zero = np.zeros(in_width, bool) if in_zero is None else in_zero
        if node.op_type == "Conv":
            group = int(attrs_of(node).get("group", 1))
            zero_kernel = _weight_zero_rows(w, 0, 1)  # [cout, cin/group]
            cout, cin_g = zero_kernel.shape
            per_group_in = in_zero.reshape(group, cin_g)
            reads_live = ~zero_kernel & ~np.repeat(per_group_in, cout // group, axis=0)
            bias = self.index.array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(cout)
        elif node.op_type == "Gemm":
            trans_b = attrs_of(node).get("transB", 0)
            zero_kernel = _weight_zero_rows(w, 0, 1) if trans_b else _weight_zero_rows(w, 1, 0)
            reads_live = ~zero_kernel & ~in_zero[None, :]
            bias = np.zeros(zero_kernel.shape[0])
            if len(node.input) > 2 and node.input[2]:
                c = self.index.array(node.input[2])
                bias = np.broadcast_to(c.reshape(-1) if c.size != 1 else c.reshape(1), (zero_kernel.shape[0],))
        else:
            zero_kernel = _weight_zero_rows(w, 1, 0)
            reads_live = ~zero_kernel & ~in_zero[None, :]
            bias = np.zeros(zero_kernel.shape[0])
        return ~reads_live.any(axis=1) & (bias == 0)

    def _norm(self, node):
        x_zero = self.zero.get(node.input[0])
        scale, shift = self.index.array(node.input[1]), self.index.array(node.input[2])
        x_zero = np.zeros(scale.shape, bool) if x_zero is None else x_zero
        if node.op_type == "BatchNormalization":
            mean = self.index.array(node.input[3])
            return (shift == 0) & ((scale == 0) | (x_zero & (mean == 0)))
        return (shift == 0) & ((scale == 0) | x_zero)

    def _elementwise(self, node, layout):
        out_shape = self.index.shape(node.output[0])
        info = self.a.tensor_channels[node.output[0]]
        parts = []
        for name in node.input:
            if not name:
                continue
            if self.index.is_constant(name):
                parts.append(self._const_zero(name, layout, len(out_shape), info.axis))
            elif self._layout(name) is not None and len(self._layout(name)) == len(layout):
                z = self.zero.get(name)
                parts.append(np.zeros(len(layout), bool) if z is None else z)
            else:
                parts.append(np.zeros(len(layout), bool))
        op = node.op_type
        if op == "Mul":
            return np.logical_or.reduce(parts)
        if op in ("Div", "PRelu"):
            return parts[0]
        return np.logical_and.reduce(parts)

    def _concat(self, node, layout):
        info = self.a.tensor_channels[node.output[0]]
        rank = len(self.index.shape(node.output[0]))
        if int(attrs_of(node)["axis"]) % rank == info.axis:
            table = self._by_id(node.input)
            return np.array([table.get(e, False) for e in layout.tolist()])
        parts = [self.zero.get(n, np.zeros(len(layout), bool)) for n in node.input]
        return np.logical_and.reduce(parts)

    def _clip_keeps_zero(self, node):
        a = attrs_of(node)
        lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
        if len(node.input) > 1 and node.input[1]:
            if not self.index.is_constant(node.input[1]):
                return False
            lo = float(self.index.array(node.input[1]))
        if len(node.input) > 2 and node.input[2]:
            if not self.index.is_constant(node.input[2]):
                return False
            hi = float(self.index.array(node.input[2]))
        return lo <= 0 <= hi

    def _pad_value(self, node):
        if len(node.input) > 2 and node.input[2]:
            if not self.index.is_constant(node.input[2]):
                return None
            return float(self.index.array(node.input[2]).reshape(-1)[0])
        return 0.0


def _read_zero(analysis: Analysis, member, value_zero, width: int):
    """Per column of `member`: True where every value it reads is provably zero.

    A grouped conv's weight column k reads input position k of every group (the analysis ties
    them into one channel): it reads zeros only when that position is zero in all groups.
    """
    if value_zero is None:
        return None
    if len(value_zero) == width:
        return value_zero
    node = analysis.index.nodes.get(member.node)
    group = int(attrs_of(node).get("group", 1)) if node is not None and node.op_type == "Conv" else 1
    if group > 1 and len(value_zero) == group * width:
        return value_zero.reshape(group, width).all(axis=0)
    return None


def dead_channels(analysis: Analysis) -> dict[str, list[int]]:
    """group name -> indices of its channels that are provably dead."""
    zeros = ZeroPropagation(analysis)
    find = analysis.elements.find
    result: dict[str, list[int]] = {}
    readers = [m for m in analysis.members if m.role == IN_WEIGHT]
    # A channel a LayerNorm (or a mean over the channels) reads changes every output: never dead.
    in_statistics = {find(e) for f in analysis.fixes if f.kind == "channel_statistics" for e in f.layouts[0].tolist() if e >= 0}
    for group in analysis.prunable_groups:
        root_of = analysis.channel_of_root(group)
        live = np.zeros(group.width, dtype=bool)
        for root, j in root_of.items():
            live[j] |= root in in_statistics
        for m in readers:
            roots = np.array([find(e) if e >= 0 else -1 for e in m.layout.tolist()])
            in_group = np.isin(roots, list(root_of))
            if not in_group.any():
                continue
            w = analysis.index.array(m.initializer)
            moved = np.moveaxis(w, m.axis, 0).reshape(w.shape[m.axis], -1)
            col_live = np.any(moved != 0, axis=1)
            value_zero = _read_zero(analysis, m, zeros.zero.get(m.reads), len(col_live))
            if value_zero is not None:
                col_live &= ~value_zero
            for p in np.nonzero(in_group & col_live)[0]:
                live[root_of[int(roots[p])]] = True
        dead = [j for j in group.prunable if not live[j]]
        if dead:
            result[group.name] = dead
    return result
