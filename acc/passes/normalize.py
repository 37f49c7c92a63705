"""The import pipeline's normalising passes: make any exporter's graph look the same to analysis.

Each pass preserves what the model computes. Together they turn Constant nodes into initializers,
upgrade old opsets, pin symbolic input dims, drop Reshape's `allowzero` where it changes nothing,
make `auto_pad` explicit, fold constant sub-graphs (exporters' shape arithmetic), and name nodes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from acc.errors import InputError
from acc.passes.base import Pass, opset_version
from acc.passes.inputs import check_input_shapes

MIN_OPSET = 11
UPGRADE_TO = 13
# Folding a node is skipped when its output would exceed this many elements (keeps files small).
FOLD_MAX_ELEMENTS = 1 << 22
# A fold may produce at most this many elements more than its constant inputs hold (shape
# arithmetic: Shape, Range, ConstantOfShape of a few dims); Expand, Tile or ConstantOfShape that
# would materialise a bigger tensor stay nodes, so the import never makes a model grow.
FOLD_GROWTH_ELEMENTS = 64
NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


class ConstantsToInitializers(Pass):
    name = "constants-to-initializers"

    def apply(self, model):
        graph = model.graph
        keep, changed = [], False
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
                tensor = _constant_value(node)
                if tensor is not None:
                    tensor.name = node.output[0]
                    graph.initializer.append(tensor)
                    changed = True
                    continue
            keep.append(node)
        if changed:
            del graph.node[:]
            graph.node.extend(keep)
        return changed


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(attr.t)
            return t
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None


class UpgradeOpset(Pass):
    name = "upgrade-opset"

    def apply(self, model):
        if opset_version(model) >= MIN_OPSET:
            return False
        try:
            upgraded = onnx.version_converter.convert_version(model, UPGRADE_TO)
        except Exception as err:  # the converter raises bare RuntimeErrors
            raise InputError(f"cannot upgrade opset {opset_version(model)} to {UPGRADE_TO}: {err}") from None
        model.CopyFrom(upgraded)
        if model.ir_version < 4:
            model.ir_version = 4
        return True


class InitializersNotInputs(Pass):
    """IR >= 4 lets initializers stand alone; old graphs list them as inputs too, which hides them."""

    name = "initializers-not-inputs"

    def apply(self, model):
        names = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in names]
        if len(inputs) == len(model.graph.input):
            return False
        if model.ir_version < 4:
            model.ir_version = 4
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        return True


class FixInputDims(Pass):
    """Replace symbolic or unknown input dims: batch by `batch`, others only where `shapes` names them
    (a shape must name a real input, with its rank, and keep the dims the model fixes)."""

    name = "fix-input-dims"

    def __init__(self, shapes: dict[str, list[int]] | None = None, batch: int = 1):
        self.shapes = shapes or {}
        self.batch = batch

    def apply(self, model):
        check_input_shapes(model, self.shapes)
        changed = False
        for inp in model.graph.input:
            dims = inp.type.tensor_type.shape.dim
            if inp.name in self.shapes:
                want = self.shapes[inp.name]
                for d, v in zip(dims, want):
                    if not (d.HasField("dim_value") and d.dim_value == v):
                        d.ClearField("dim_param")
                        d.dim_value = int(v)
                        changed = True
                continue
            for i, d in enumerate(dims):
                if not d.HasField("dim_value") or d.dim_value <= 0:
                    if i != 0:
                        raise InputError(
                            f"input '{inp.name}' has an unknown dim {i} ('{d.dim_param}'): give its shape"
                        )
                    d.ClearField("dim_param")
                    d.dim_value = self.batch
                    changed = True
        return changed


class DropReshapeAllowzero(Pass):
    """`allowzero=1` only matters when the target shape holds a 0; onnx2torch cannot take it."""

    name = "drop-reshape-allowzero"

    def apply(self, model):
        inits = {t.name: t for t in model.graph.initializer}
        changed = False
        for node in model.graph.node:
            if node.op_type != "Reshape":
                continue
            for attr in list(node.attribute):
                if attr.name == "allowzero" and attr.i == 1 and node.input[1] in inits:
                    if not np.any(numpy_helper.to_array(inits[node.input[1]]) == 0):
                        node.attribute.remove(attr)
                        changed = True
        return changed


class BatchAgnosticReshape(Pass):
    """A Reshape target that spells the batch dim as a literal 1 (exporters fold it from the sample
    input) copies it from the input instead (0), so the graph also runs on a batch when trained."""

    name = "batch-agnostic-reshape"

    def apply(self, model):
        inits = {t.name: t for t in model.graph.initializer}
        shapes = static_shapes(model)
        batch_inputs = {i.name for i in model.graph.input if i.name not in inits}
        changed = False
        for node in model.graph.node:
            if node.op_type != "Reshape" or node.input[1] not in inits:
                continue
            if any(a.name == "allowzero" and a.i for a in node.attribute):
                continue
            in_shape = shapes.get(node.input[0])
            target = numpy_helper.to_array(inits[node.input[1]])
            if in_shape is None or target.ndim != 1 or not len(target) or not in_shape:
                continue
            if target[0] == 1 and in_shape[0] == 1 and batch_inputs:
                fixed = target.copy()
                fixed[0] = 0
                users = sum(1 for n in model.graph.node for i in n.input if i == node.input[1])
                name = node.input[1] if users == 1 else f"{node.input[1]}__{node.name}"
                if name != node.input[1]:
                    model.graph.initializer.append(numpy_helper.from_array(fixed, name))
                    node.input[1] = name
                else:
                    inits[name].CopyFrom(numpy_helper.from_array(fixed, name))
                changed = True
        return changed


class NameNodes(Pass):
    """Every node gets a unique, stable name (analysis and reports refer to nodes by name)."""

    name = "name-nodes"

    def apply(self, model):
        seen, changed = set(), False
        for i, node in enumerate(model.graph.node):
            name = node.name or f"{node.op_type}_{i}"
            while name in seen:
                name = f"{name}_{i}"
            if name != node.name:
                node.name = name
                changed = True
            seen.add(name)
        return changed


class InferShapes(Pass):
    name = "infer-shapes"

    def apply(self, model):
        before = len(static_shapes(model))
        # A symbolic dim inferred before constants were folded (an Expand's target) would stay
        # symbolic: inference keeps existing value_info. Drop those and infer them again.
        static = [vi for vi in model.graph.value_info if _is_static(vi)]
        if len(static) != len(model.graph.value_info):
            del model.graph.value_info[:]
            model.graph.value_info.extend(static)
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as err:
            raise InputError(f"shape inference failed: {str(err).splitlines()[0]}") from None
        model.CopyFrom(inferred)
        return len(static_shapes(model)) != before


def _is_static(vi) -> bool:
    t = vi.type
    return (t.HasField("tensor_type") and t.tensor_type.HasField("shape")
            and all(d.HasField("dim_value") for d in t.tensor_type.shape.dim))


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, for every tensor whose shape is fully known."""
    shapes = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for t in model.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes


class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant, and Shape/Size of statically shaped tensors."""

    name = "fold-constants"

    def apply(self, model):
        graph = model.graph
        consts = {t.name: t for t in graph.initializer}
        shapes = static_shapes(model)
        outputs = {o.name for o in graph.output}
        opset = opset_version(model)
        keep, changed = [], False
        for node in graph.node:
            values = self._fold(node, consts, shapes, outputs, opset)
            if values is None:
                keep.append(node)
                continue
            for name, value in zip(node.output, values):
                tensor = numpy_helper.from_array(np.asarray(value), name)
                graph.initializer.append(tensor)
                consts[name] = tensor
            changed = True
        if changed:
            del graph.node[:]
            graph.node.extend(keep)
        return changed

    def _fold(self, node, consts, shapes, outputs, opset):
        if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLD or node.op_type == "Constant":
            return None
        if any(o in outputs for o in node.output):
            return None
        if node.op_type in ("Shape", "Size") and node.input[0] in shapes:
            shape = np.array(shapes[node.input[0]], dtype=np.int64)
            if node.op_type == "Size":
                return [np.array(np.prod(shape), dtype=np.int64)]
            attrs = {a.name: a.i for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(shape))
            return [shape[start:end]]
        if not node.input or not all((not i) or i in consts for i in node.input):
            return None
        feeds = {i: numpy_helper.to_array(consts[i]) for i in node.input if i}
        try:
            evaluator = ReferenceEvaluator(_single_node_model(node, consts, opset))
            values = evaluator.run(None, feeds)
        except Exception:
            return None  # not foldable here; analysis treats it like any other node
        produced = sum(int(np.asarray(v).size) for v in values)
        consumed = sum(int(np.prod(consts[i].dims, dtype=np.int64)) for i in set(node.input) if i)
        if any(np.asarray(v).size > FOLD_MAX_ELEMENTS for v in values) or produced > consumed + FOLD_GROWTH_ELEMENTS:
            return None
        return values


def _single_node_model(node, consts, opset):
    inputs = [
        helper.make_tensor_value_info(i, consts[i].data_type, list(consts[i].dims)) for i in node.input if i
    ]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


AXES_OPS = {"Squeeze", "Unsqueeze", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
            "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


class NonNegativeAxes(Pass):
    """Squeeze, Unsqueeze and reductions count their axes from the front (ranks are static here).
    onnx2torch applies negative axes one at a time, so a second one points at another dim:
    Unsqueeze [-2, -1] of [N, C] gave [N, 1, C, 1], ReduceMax [-2, -1] without keepdims reduced C."""

    name = "non-negative-axes"

    def apply(self, model):
        shapes = static_shapes(model)
        inits = {t.name: t for t in model.graph.initializer}
        changed = False
        for node in model.graph.node:
            if node.op_type not in AXES_OPS or node.domain not in ("", "ai.onnx"):
                continue
            shape = shapes.get(node.output[0] if node.op_type == "Unsqueeze" else node.input[0])
            attr = next((a for a in node.attribute if a.name == "axes"), None)
            from_input = attr is None and len(node.input) > 1 and node.input[1] in inits
            axes = list(attr.ints) if attr is not None else numpy_helper.to_array(inits[node.input[1]]).tolist() if from_input else []
            if shape is None or not any(a < 0 for a in axes):
                continue
            fixed = [int(a) % len(shape) for a in axes]
            if attr is not None:
                node.attribute.remove(attr)
                node.attribute.append(helper.make_attribute("axes", fixed))
            else:
                name = f"{node.input[1]}__{node.name}"
                model.graph.initializer.append(numpy_helper.from_array(np.array(fixed, dtype=np.int64), name))
                node.input[1] = name  # the old one goes with the unused initializers
            changed = True
        return changed


class InlineConstantIf(Pass):
    """An If whose condition folded to a constant (exporters test a rank or a dim the import has
    fixed) becomes the nodes of the branch it takes; its Constant nodes become initializers."""

    name = "inline-constant-if"

    def apply(self, model):
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        outer = {o for n in graph.node for o in n.output} | set(inits) | {i.name for i in graph.input}
        nodes, changed = [], False
        for node in graph.node:
            branch = self._branch(node, inits)
            inner = [] if branch is None else [o for n in branch.node for o in n.output]
            if branch is None or len(branch.output) != len(node.output) or outer & set(inner):
                nodes.append(node)
                continue
            for k, inner_node in enumerate(branch.node):
                tensor = _constant_value(inner_node) if inner_node.op_type == "Constant" else None
                if tensor is not None:
                    tensor.name = inner_node.output[0]
                    graph.initializer.append(tensor)
                else:
                    inner_node.name = f"{node.name}/{inner_node.name or inner_node.op_type}_{k}"  # unique, like NameNodes
                    nodes.append(inner_node)
            for i, (result, out) in enumerate(zip(branch.output, node.output)):
                nodes.append(helper.make_node("Identity", [result.name], [out], name=f"{node.name}_taken_{i}"))
            changed = True
        if changed:
            del graph.node[:]
            graph.node.extend(nodes)
        return changed

    @staticmethod
    def _branch(node, inits):
        if node.op_type != "If" or node.domain not in ("", "ai.onnx") or node.input[0] not in inits:
            return None
        cond = numpy_helper.to_array(inits[node.input[0]])
        if cond.size != 1:
            return None
        taken = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
        return next((a.g for a in node.attribute if a.name == taken), None)


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of `graph` (or of a subgraph inside one: If/Loop/Scan bodies read
    outer-scope names) takes as input, and the graph's outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= used_names(sub)
    return names


class DropUnusedInitializers(Pass):
    """Initializers that no node reads go (folding leaves its inputs behind, and a model that
    carried a weight twice, once as read and once folded, would keep both)."""

    name = "drop-unused-initializers"

    def apply(self, model):
        return drop_unused_initializers(model)


def drop_unused_initializers(model: onnx.ModelProto) -> bool:
    """In place; initializers named as graph inputs (overridable defaults) stay. True if any went."""
    graph = model.graph
    keep_names = used_names(graph) | {i.name for i in graph.input}
    unused = [i for i, t in enumerate(graph.initializer) if t.name not in keep_names]
    for i in reversed(unused):
        del graph.initializer[i]
    return bool(unused)


class ExplicitPads(Pass):
    """auto_pad=SAME_* becomes explicit `pads` (needs static shapes): one form for every consumer."""

    name = "explicit-pads"
    OPS = {"Conv", "MaxPool", "AveragePool", "LpPool"}

    def apply(self, model):
        shapes = static_shapes(model)
        inits = {t.name: t for t in model.graph.initializer}
        changed = False
        for node in model.graph.node:
            if node.op_type not in self.OPS:
                continue
            attrs = {a.name: a for a in node.attribute}
            mode = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
            if mode not in ("SAME_UPPER", "SAME_LOWER") or node.input[0] not in shapes:
                continue
            in_shape = shapes[node.input[0]][2:]
            if node.op_type == "Conv":
                kernel = list(inits[node.input[1]].dims[2:]) if node.input[1] in inits else None
                if kernel is None and "kernel_shape" in attrs:
                    kernel = list(attrs["kernel_shape"].ints)
            else:
                kernel = list(attrs["kernel_shape"].ints)
            if kernel is None:
                continue
            strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * len(kernel)
            dil = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * len(kernel)
            begin, end = [], []
            for size, k, s, d in zip(in_shape, kernel, strides, dil):
                out = -(-size // s)
                total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
                small, large = total // 2, total - total // 2
                begin.append(small if mode == "SAME_UPPER" else large)
                end.append(large if mode == "SAME_UPPER" else small)
            node.attribute.remove(attrs["auto_pad"])
            if "pads" in attrs:
                node.attribute.remove(attrs["pads"])
            node.attribute.append(helper.make_attribute("pads", begin + end))
            changed = True
        return changed
