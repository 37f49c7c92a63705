"""The bookkeeping of channel analysis.

Every channel that a Conv/Gemm/MatMul creates (and every channel of a graph input or of a tensor
the analysis cannot explain) is an *element*: an integer id. A tensor's channel axis carries a
*layout*, the element id at each position (-1 where the position holds no element, e.g. padding).
Ops that tie channels together (residual Add, grouped conv, equal Split) union elements; the
connected sets of elements are the channels that must be removed together.

A *member* is one initializer axis whose positions follow a layout: slicing the member at the
positions of removed elements is how the rewrite shrinks the graph. A *shape fix* is a constant
(Reshape target, Split sizes, Slice bounds, conv `group`) whose value depends on how many
positions of a layout survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Member roles. Weight rows that write a channel, weight columns that read one, and the rest.
OUT_WEIGHT = "out_weight"
IN_WEIGHT = "in_weight"
DW_WEIGHT = "dw_weight"  # depthwise: one row both reads and writes its channel
BIAS = "bias"
BN_SCALE = "bn_scale"
BN_SHIFT = "bn_shift"
BN_MEAN = "bn_mean"
BN_VAR = "bn_var"
CONST = "const"  # per-channel constant of an elementwise op (Add/Mul/PRelu slope ...)

WEIGHT_ROLES = (OUT_WEIGHT, IN_WEIGHT, DW_WEIGHT)


@dataclass
class TensorChannels:
    axis: int
    layout: np.ndarray  # int64 element id per position along `axis`

    @property
    def width(self) -> int:
        return int(self.layout.shape[0])


@dataclass
class Member:
    initializer: str
    axis: int
    layout: np.ndarray
    role: str
    node: str
    reads: str | None = None  # IN_WEIGHT/DW_WEIGHT: the tensor read through these positions


@dataclass
class ShapeFix:
    kind: str  # reshape_dim | split_sizes | slice_bounds | conv_group | resize_sizes
    node: str
    layouts: list[np.ndarray]
    data: dict = field(default_factory=dict)


@dataclass
class Space:
    start: int
    width: int
    node: str | None  # producing node; None for graph inputs and unexplained tensors
    tensor: str


class ElementTable:
    """Allocates element ids in contiguous spaces and unions them (union-find with path halving)."""

    def __init__(self):
        self.parent: list[int] = []
        self.spaces: list[Space] = []
        self.frozen: dict[int, str] = {}

    def new_space(self, width: int, node: str | None, tensor: str) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + width))
        self.spaces.append(Space(start, width, node, tensor))
        return np.arange(start, start + width, dtype=np.int64)

    def find(self, e: int) -> int:
        parent = self.parent
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    def union(self, a: int, b: int) -> None:
        if a < 0 or b < 0:
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # Keep the smaller id as root: roots then name channels in creation order.
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra

    def union_layouts(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if (x < 0) != (y < 0):
                # Paired with a position that holds no channel (constant padding): it cannot go.
                self.freeze(np.array([max(x, y)]), "paired with constant padding of the channel axis")
            self.union(x, y)

    def freeze(self, layout: np.ndarray, reason: str) -> None:
        for e in layout.tolist():
            if e >= 0:
                self.frozen.setdefault(e, reason)

    def roots(self, layout: np.ndarray) -> np.ndarray:
        return np.array([self.find(e) if e >= 0 else -1 for e in layout.tolist()], dtype=np.int64)

    def space_of(self, e: int) -> int:
        lo, hi = 0, len(self.spaces) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.spaces[mid].start <= e:
                lo = mid
            else:
                hi = mid - 1
        return lo
