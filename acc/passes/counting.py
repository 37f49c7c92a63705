"""Parameter and FLOPs counts, the way the pruning literature counts them.

Parameters: every floating-point initializer except BatchNormalization running statistics (they
are buffers, not parameters: torch's `parameters()` convention). Integer constants (shapes,
indices) are not parameters. FLOPs: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul
for one input (the batch of the imported graph); elementwise work is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from acc.passes.graph_index import GraphIndex, attrs_of

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class Counts:
    params: int
    nonzero_params: int
    flops: int
    node_flops: dict[str, int]

    def as_dict(self) -> dict:
        return {"params": self.params, "nonzero_params": self.nonzero_params, "flops": self.flops}


def _buffers(index: GraphIndex) -> set[str]:
    names = set()
    for node in index.graph.node:
        if node.op_type == "BatchNormalization":
            names.update(n for n in node.input[3:5] if n)
    return names


def parameter_names(index: GraphIndex) -> list[str]:
    buffers = _buffers(index)
    return [t.name for t in index.graph.initializer if t.data_type in FLOAT_TYPES and t.name not in buffers]


def node_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        w = index.shape(node.input[1])
        if w is None:
            return 0
        if op == "Conv":
            out = index.shape(node.output[0])
            return int(np.prod(out)) * int(np.prod(w[1:])) if out else 0
        x = index.shape(node.input[0])
        return int(np.prod(x)) * int(np.prod(w[1:])) if x else 0
    if op in ("Gemm", "MatMul"):
        out = index.shape(node.output[0])
        a = index.shape(node.input[0])
        if out is None or a is None:
            return 0
        trans_a = op == "Gemm" and attrs_of(node).get("transA", 0)
        k = a[0] if trans_a else a[-1]
        return int(np.prod(out)) * int(k)
    return 0


def count(model: onnx.ModelProto, index: GraphIndex | None = None) -> Counts:
    index = index or GraphIndex(model)
    params = nonzero = 0
    for name in parameter_names(index):
        arr = index.array(name)
        params += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    node_flops = {n.name: node_macs(index, n) for n in index.graph.node}
    return Counts(params, nonzero, int(sum(node_flops.values())), node_flops)
