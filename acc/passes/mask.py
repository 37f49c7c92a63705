"""The masked model: same graph, same shapes, the removed channels' weights zeroed through the group.

It is what the pruned model computes before the rewrite makes it smaller, and what verify compares
the rewritten graph against. Ops that take statistics across the channels (LayerNormalization, a
ReduceMean over them: a transformer's residual stream) would still count the removed channels;
in the masked model they are replaced by the same statistics over the kept channels only. Only weights, biases and BN scale/shift are zeroed: other per-channel
constants (a divisor, a running variance) keep their values so no channel becomes inf or NaN;
the zeroed reading columns make the removed channels' values irrelevant.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from acc.passes.analysis import Analysis
from acc.passes.channels import BIAS, BN_SCALE, BN_SHIFT, DW_WEIGHT, IN_WEIGHT, OUT_WEIGHT
from acc.passes.plan import Plan, Removal

ZEROED_ROLES = (OUT_WEIGHT, IN_WEIGHT, DW_WEIGHT, BIAS, BN_SCALE, BN_SHIFT)


def zero_removed(analysis: Analysis, plan: Plan, arrays: dict[str, np.ndarray]) -> None:
    """Zero, in place, the removed positions of every weight-like member in `arrays`."""
    removal = Removal(analysis, plan)
    for m in analysis.members:
        if m.role not in ZEROED_ROLES or m.initializer not in arrays:
            continue
        mask = removal.keep_mask(m.layout)
        if mask.all():
            continue
        index = [slice(None)] * arrays[m.initializer].ndim
        index[m.axis] = ~mask
        arrays[m.initializer][tuple(index)] = 0


def _masked_statistics(model: onnx.ModelProto, node: onnx.NodeProto, keep: np.ndarray, axis: int, rank: int,
                       opset: int) -> list:
    """Nodes computing `node` (ReduceMean over `axis`, keepdims, or LayerNormalization on the last
    axis) over the kept positions of `axis` only; they write the node's own outputs."""
    p = f"{node.name}__masked"
    shape = [1] * rank
    shape[axis] = len(keep)
    model.graph.initializer.extend([
        numpy_helper.from_array(keep.astype(np.float32).reshape(shape), f"{p}_keep"),
        numpy_helper.from_array(np.array(float(keep.sum()), dtype=np.float32), f"{p}_count"),
        numpy_helper.from_array(np.array([axis], dtype=np.int64), f"{p}_axes"),
    ])

    def mean(x, out):
        summed = (onnx.helper.make_node("ReduceSum", [f"{x}_k", f"{p}_axes"], [f"{x}_s"], keepdims=1) if opset >= 13
                  else onnx.helper.make_node("ReduceSum", [f"{x}_k"], [f"{x}_s"], axes=[axis], keepdims=1))
        return [onnx.helper.make_node("Mul", [x, f"{p}_keep"], [f"{x}_k"]), summed,
                onnx.helper.make_node("Div", [f"{x}_s", f"{p}_count"], [out])]

    x = node.input[0]
    if node.op_type == "ReduceMean":
        return mean(x, node.output[0])
    eps = float(next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5))
    model.graph.initializer.append(numpy_helper.from_array(np.array(eps, dtype=np.float32), f"{p}_eps"))
    nodes = mean(x, f"{p}_mean")
    nodes += [
        onnx.helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_centred"]),
        onnx.helper.make_node("Mul", [f"{p}_centred", f"{p}_keep"], [f"{p}_d"]),
        onnx.helper.make_node("Mul", [f"{p}_d", f"{p}_d"], [f"{p}_sq"]),
    ]
    nodes += mean(f"{p}_sq", f"{p}_var")
    nodes += [
        onnx.helper.make_node("Add", [f"{p}_var", f"{p}_eps"], [f"{p}_var_eps"]),
        onnx.helper.make_node("Sqrt", [f"{p}_var_eps"], [f"{p}_std"]),
        onnx.helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_normed"]),
    ]
    y = f"{p}_normed"
    if len(node.input) > 1 and node.input[1]:
        nodes.append(onnx.helper.make_node("Mul", [y, node.input[1]], [f"{p}_scaled"]))
        y = f"{p}_scaled"
    if len(node.input) > 2 and node.input[2]:
        nodes.append(onnx.helper.make_node("Add", [y, node.input[2]], [node.output[0]]))
    else:
        nodes.append(onnx.helper.make_node("Identity", [y], [node.output[0]]))
    return nodes


def mask_statistics(analysis: Analysis, plan: Plan, model: onnx.ModelProto) -> None:
    """Replace, in place, every channel-statistics op that loses channels by its kept-only form."""
    removal = Removal(analysis, plan)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    for fix in analysis.fixes:
        if fix.kind != "channel_statistics":
            continue
        keep = removal.keep_mask(fix.layouts[0])
        if keep.all():
            continue
        at = next(i for i, n in enumerate(model.graph.node) if n.name == fix.node)
        node = model.graph.node[at]
        rank = len(analysis.index.shape(node.input[0]))
        replacement = _masked_statistics(model, node, keep, fix.data["axis"], rank, opset)
        del model.graph.node[at]
        for k, new in enumerate(replacement):
            new.name = f"{fix.node}__masked_{k}"
            model.graph.node.insert(at + k, new)


def masked_model(analysis: Analysis, plan: Plan) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(analysis.model)
    names = {m.initializer for m in analysis.members if m.role in ZEROED_ROLES}
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer if t.name in names}
    zero_removed(analysis, plan, arrays)
    for t in model.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))
    mask_statistics(analysis, plan, model)
    return model
