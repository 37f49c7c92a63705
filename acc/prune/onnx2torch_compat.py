"""Fill gaps in onnx2torch 1.5.15 without forking it.

- Its NMS/RoiAlign converters import torchvision, which cannot load beside our torch: a stub is
  present only while onnx2torch imports, then removed.
- Opset 18 reductions take `axes` as an input, which it does not convert: added here.
- Its registry is keyed by an op's schema version, and it stops at opset 18. For ops whose newer
  versions only widen the accepted types (float8, int4, ...) or add modes our graphs do not use,
  the newest registered converter also serves the newer versions.
"""

from __future__ import annotations

import importlib
import sys
import types

from onnx import defs

# Newer versions of these ops change types only (or add attributes the converters check themselves).
TYPE_ONLY_UPGRADES = {
    "Reshape", "Cast", "CastLike", "Identity", "Shape", "Size", "Squeeze", "Unsqueeze", "Flatten",
    "Transpose", "ConstantOfShape", "Pad", "AveragePool", "Constant",
    "Equal", "If", "Scan", "Loop",
}
MAX_OPSET = 23


def _stubbed_import(name: str):
    stubbed = []
    for mod in ("torchvision", "torchvision.ops"):
        if mod not in sys.modules:
            stub = types.ModuleType(mod)
            stub.__path__ = []
            sys.modules[mod] = stub
            stubbed.append(mod)
    if stubbed:
        sys.modules["torchvision"].ops = sys.modules["torchvision.ops"]
        for attr in ("roi_align", "nms", "box_convert"):
            setattr(sys.modules["torchvision.ops"], attr, None)
    try:
        return importlib.import_module(name)
    finally:
        for mod in stubbed:
            sys.modules.pop(mod, None)


def _alias_newer_versions() -> None:
    from onnx2torch.node_converters import registry

    table = registry._CONVERTER_REGISTRY
    newest: dict[str, tuple[int, object]] = {}
    for desc, converter in table.items():
        if desc.domain == defs.ONNX_DOMAIN and desc.operation_type in TYPE_ONLY_UPGRADES:
            if desc.version > newest.get(desc.operation_type, (-1, None))[0]:
                newest[desc.operation_type] = (desc.version, converter)
    for op, (version, converter) in newest.items():
        for opset in range(version + 1, MAX_OPSET + 1):
            try:
                since = defs.get_schema(op, max_inclusive_version=opset, domain=defs.ONNX_DOMAIN).since_version
            except (RuntimeError, defs.SchemaError):
                continue
            desc = registry.OperationDescription(defs.ONNX_DOMAIN, op, since)
            if desc not in table:
                table[desc] = converter


REDUCE_WITH_AXES_INPUT = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def _add_reduce_v18() -> None:
    """Opset 18 moved `axes` of these reductions from an attribute to an input (a constant here)."""
    from onnx2torch.node_converters import registry
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    def convert(node, graph):
        axes = None
        if len(node.input_values) > 1 and node.input_values[1]:
            axes = [int(a) for a in get_const_value(node.input_values[1], graph).tolist()]
        if not axes and node.attributes.get("noop_with_empty_axes", 0):
            raise NotImplementedError(f"{node.operation_type} with empty axes as a no-op")
        return OperationConverterResult(
            torch_module=OnnxReduceStaticAxes(node.operation_type, axes, node.attributes.get("keepdims", 1)),
            onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
        )

    for op in REDUCE_WITH_AXES_INPUT:
        desc = registry.OperationDescription(defs.ONNX_DOMAIN, op, 18)
        registry._CONVERTER_REGISTRY.setdefault(desc, convert)


def onnx2torch():
    """The onnx2torch module, imported once with the fixes above."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    module = _stubbed_import("onnx2torch")
    _add_reduce_v18()
    _alias_newer_versions()
    return module
