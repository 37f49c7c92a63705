"""Build the physically smaller graph: slice members, fix width-dependent constants, keep the rest.

Only initializers that are members or shape fixes change; nodes and every other tensor stay as
they were, except `group` attributes of depthwise convs, which follow their width.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from acc.errors import VerificationError
from acc.passes.analysis import Analysis
from acc.passes.normalize import drop_unused_initializers
from acc.passes.plan import Plan, Removal


def rewrite(analysis: Analysis, plan: Plan) -> onnx.ModelProto:
    removal = Removal(analysis, plan)
    model = onnx.ModelProto()
    model.CopyFrom(analysis.model)
    inits = {t.name: t for t in model.graph.initializer}
    for name, per_axis in removal.member_masks().items():
        arr = numpy_helper.to_array(inits[name])
        sliced = arr
        for axis, mask in per_axis.items():
            if not mask.all():
                sliced = np.compress(mask, sliced, axis=axis)
        if sliced is not arr:
            inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(sliced), name))
    nodes = {n.name: n for n in model.graph.node}
    for fix in analysis.fixes:
        _apply_fix(model, nodes[fix.node], fix, removal, inits)
    drop_unused_initializers(model)
    # Intermediate shapes changed: drop them and infer again; graph outputs are boundaries.
    del model.graph.value_info[:]
    try:
        return shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as err:  # onnx raises InferenceError or bare errors, with multi-line texts
        text = " ".join(str(err).split())
        raise VerificationError(f"the rewritten graph is inconsistent: {text[:400]}") from None


def _kept(removal: Removal, layout: np.ndarray) -> int:
    return int(removal.keep_mask(layout).sum())


def _own_constant(model, node, input_index, inits) -> onnx.TensorProto:
    """The constant at node.input[i], cloned first when another node reads it too."""
    name = node.input[input_index]
    users = sum(1 for n in model.graph.node for i in n.input if i == name)
    if users > 1:
        clone = onnx.TensorProto()
        clone.CopyFrom(inits[name])
        clone.name = f"{name}__{node.name}"
        model.graph.initializer.append(clone)
        inits[clone.name] = model.graph.initializer[-1]
        node.input[input_index] = clone.name
    return inits[node.input[input_index]]


def _set_values(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(values.astype(numpy_helper.to_array(tensor).dtype), tensor.name))


def _set_attr(node, name, value) -> None:
    for a in node.attribute:
        if a.name == name:
            node.attribute.remove(a)
            break
    node.attribute.append(helper.make_attribute(name, value))


def _apply_fix(model, node, fix, removal, inits) -> None:
    if fix.kind == "conv_group":
        _set_attr(node, "group", _kept(removal, fix.layouts[0]))
    elif fix.kind in ("reshape_dim", "resize_sizes"):
        tensor = _own_constant(model, node, fix.data["input"], inits)
        values = numpy_helper.to_array(tensor).copy()
        values[fix.data["index"]] = _kept(removal, fix.layouts[0])
        _set_values(tensor, values)
    elif fix.kind == "split_sizes":
        sizes = np.array([_kept(removal, layout) for layout in fix.layouts], dtype=np.int64)
        if "input" in fix.data:
            _set_values(_own_constant(model, node, fix.data["input"], inits), sizes)
        else:
            _set_attr(node, "split", [int(s) for s in sizes])
    elif fix.kind == "slice_bounds":
        mask = removal.keep_mask(fix.layouts[0])
        start, stop = fix.data["start"], fix.data["stop"]
        new_start, new_stop = int(mask[:start].sum()), int(mask[:max(start, stop)].sum())
        for input_index, value in ((1, new_start), (2, new_stop)):
            tensor = _own_constant(model, node, input_index, inits)
            values = numpy_helper.to_array(tensor).copy()
            values[fix.data["position"]] = value
            _set_values(tensor, values)
    elif fix.kind == "channel_statistics":
        pass  # LayerNormalization / ReduceMean take the narrower axis as it comes
    else:  # pragma: no cover - the analysis only emits the kinds above
        raise ValueError(f"unknown shape fix {fix.kind}")
