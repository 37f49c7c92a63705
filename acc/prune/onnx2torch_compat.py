"""Fill gaps in onnx2torch 1.5.15 without forking it.

- Its NMS/RoiAlign converters import torchvision, which cannot load beside our torch: a stub is
  present only while onnx2torch imports, then removed.
- Opset 18 reductions take `axes` as an input, which it does not convert: added here.
- Its registry is keyed by an op's schema version, and it stops at opset 18. For ops whose newer
  versions only widen the accepted types (float8, int4, ...) or add modes our graphs do not use,
  the newest registered converter also serves the newer versions.
- Split 18 (`num_outputs`), Gelu 20 and Resize 18/19 (their defaults are Resize 13), which the
  dynamo exporter writes, have no converter there: added here.
- AveragePool with asymmetric pads (SAME padding of TensorFlow-made graphs), or pads over half the
  kernel, is "not implemented": here it is an explicit zero pad and an unpadded pool, divided by
  the pooled share of real positions where the pads must not count (count_include_pad=0).
"""

from __future__ import annotations

import importlib
import math
import sys
import types

import torch
import torch.nn.functional as F
from onnx import defs
from torch import nn

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
        for version in _versions_since(op, 18):  # ReduceMax/ReduceMin 20 only add bool inputs
            desc = registry.OperationDescription(defs.ONNX_DOMAIN, op, version)
            registry._CONVERTER_REGISTRY.setdefault(desc, convert)


def _versions_since(op: str, first: int) -> list[int]:
    """The schema versions of `op` from opset `first` up to MAX_OPSET."""
    versions = set()
    for opset in range(first, MAX_OPSET + 1):
        try:
            since = defs.get_schema(op, max_inclusive_version=opset, domain=defs.ONNX_DOMAIN).since_version
        except (RuntimeError, defs.SchemaError):
            continue
        if since >= first:
            versions.add(since)
    return sorted(versions)


class SplitEqual(nn.Module):
    """Split v18 by `num_outputs`: parts of ceil(length / n), the last one smaller."""

    def __init__(self, parts: int, axis: int):
        super().__init__()
        self.parts, self.axis = parts, axis

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None):
        if split is not None:
            return torch.split(x, split.tolist(), dim=self.axis)
        return torch.split(x, -(-x.shape[self.axis] // self.parts), dim=self.axis)


def _convert_split_v18(node, graph):
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    parts = int(node.attributes.get("num_outputs", len(node.output_values)))
    module = SplitEqual(parts, int(node.attributes.get("axis", 0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class BatchConcat(nn.Module):
    """Concat whose constant inputs were folded at batch 1 (a class token expanded to the batch by
    the exported model, folded by acc's import at its batch of 1): at training batch sizes they are
    broadcast along the batch axis again, as the model meant. At batch 1 it is plain Concat."""

    def __init__(self, axis: int, constant: tuple[bool, ...]):
        super().__init__()
        self.axis, self.constant = axis, constant

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        batch = max((x.shape[0] for x, c in zip(xs, self.constant) if not c and x.dim()), default=1)
        if batch > 1 and self.axis % xs[0].dim() != 0:
            xs = tuple(x.expand(batch, *x.shape[1:]) if c and x.dim() and x.shape[0] == 1 else x
                       for x, c in zip(xs, self.constant))
        return torch.cat(xs, self.axis)


def _convert_concat(node, graph):
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    constant = tuple(name in graph.initializers for name in node.input_values)
    module = BatchConcat(int(node.attributes.get("axis", 0)), constant)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class BatchReshape(nn.Module):
    """ONNX Reshape (zeros copy the input's dims unless allowzero). A constant target shape that was
    written at batch 1 (an exporter folds the batch of its example into the constant, as the dynamo
    exporter does inside scaled_dot_product_attention) keeps its per-sample shape at training batch
    sizes: its leading 1 becomes the number of samples the input holds (its element count over the
    batch-1 shape's, or with a -1 the input's own batch). At batch 1 it is plain Reshape."""

    def __init__(self, allowzero: bool, constant: bool):
        super().__init__()
        self.allowzero, self.constant = allowzero, constant

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        dims = [int(d) for d in shape.tolist()]
        if not self.allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        if self.constant and dims and dims[0] == 1:
            if -1 not in dims:  # N times the batch-1 elements: N samples (the batch may be merged with heads before)
                total = math.prod(dims)
                if total and x.numel() != total and x.numel() % total == 0:
                    dims[0] = x.numel() // total
            elif x.dim() and x.shape[0] > 1 and x.numel() % x.shape[0] == 0:
                rest = math.prod(d for d in dims[1:] if d != -1)
                if rest and (x.numel() // x.shape[0]) % rest == 0:
                    dims[0] = x.shape[0]
        return torch.reshape(x, dims)


def _convert_reshape(node, graph):
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    constant = len(node.input_values) > 1 and node.input_values[1] in graph.initializers
    module = BatchReshape(bool(node.attributes.get("allowzero", 0)), constant)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _convert_gelu(node, graph):
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    approximate = node.attributes.get("approximate", "none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return OperationConverterResult(torch_module=nn.GELU(approximate=approximate), onnx_mapping=onnx_mapping_from_node(node))


def _resize_v18(resize_v13):
    """Resize 18/19 add antialiasing, `axes`, aspect-ratio policies and a coordinate mode: the
    defaults are Resize 13, which onnx2torch converts; anything else is refused by name."""

    def convert(node, graph):
        a = node.attributes

        def text(name, default):
            value = a.get(name, default)
            return value.decode() if isinstance(value, bytes) else value

        if a.get("antialias", 0):
            raise NotImplementedError("Resize with antialias=1")
        if "axes" in a:
            raise NotImplementedError("Resize with axes")
        if text("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise NotImplementedError("Resize with keep_aspect_ratio_policy other than stretch")
        if text("coordinate_transformation_mode", "half_pixel") == "half_pixel_symmetric":
            raise NotImplementedError("Resize with coordinate_transformation_mode=half_pixel_symmetric")
        return resize_v13(node, graph)

    return convert


def _add_newer_ops() -> None:
    """Split 18 (num_outputs), Gelu 20, Resize 18/19: what the dynamo exporter writes at opset 20;
    Concat and Reshape with batch-1 constants (BatchConcat, BatchReshape)."""
    from onnx2torch.node_converters import registry

    table, desc = registry._CONVERTER_REGISTRY, registry.OperationDescription
    for version in _versions_since("Split", 18):
        table.setdefault(desc(defs.ONNX_DOMAIN, "Split", version), _convert_split_v18)
    for version in (4, 11, 13):
        table[desc(defs.ONNX_DOMAIN, "Concat", version)] = _convert_concat
    for version in _versions_since("Reshape", 5):
        table[desc(defs.ONNX_DOMAIN, "Reshape", version)] = _convert_reshape
    for version in _versions_since("Gelu", 20):
        table.setdefault(desc(defs.ONNX_DOMAIN, "Gelu", version), _convert_gelu)
    resize_v13 = table[desc(defs.ONNX_DOMAIN, "Resize", 13)]
    for version in _versions_since("Resize", 18):
        table.setdefault(desc(defs.ONNX_DOMAIN, "Resize", version), _resize_v18(resize_v13))


class PaddedAveragePool(nn.Module):
    """ONNX AveragePool for any constant pads: zero-pad, pool with no padding of torch's own, and
    (count_include_pad=0) divide by the pooled share of positions that are not padding. torch's
    own divisor cancels out of that ratio, ceil_mode's clipped windows included."""

    def __init__(self, kernel, strides, pads, ceil_mode: bool, count_include_pad: bool):
        super().__init__()
        rank = len(kernel)
        self.kernel, self.strides = list(kernel), list(strides)
        # ONNX pads: [begin_0, ..., begin_n, end_0, ..., end_n]; F.pad: last axis first, (begin, end).
        self.pads = [p for axis in reversed(range(rank)) for p in (int(pads[axis]), int(pads[axis + rank]))]
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]

    def _pool(self, x):
        return self.pool(x, self.kernel, self.strides, 0, self.ceil_mode, True)

    def _windows(self, size: int, axis: int) -> int:
        """ONNX's output length: with ceil_mode, a last window that starts in the end padding is dropped."""
        rank = len(self.kernel)
        begin, end = self.pads[2 * (rank - 1 - axis)], self.pads[2 * (rank - 1 - axis) + 1]
        span, k, s = size + begin + end, self.kernel[axis], self.strides[axis]
        n = (-(-(span - k) // s) if self.ceil_mode else (span - k) // s) + 1
        return n - 1 if self.ceil_mode and (n - 1) * s >= size + begin else n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self._pool(F.pad(x, self.pads))
        if not self.count_include_pad:
            real = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device), self.pads)
            pooled = pooled / self._pool(real)
        if self.ceil_mode:
            pooled = pooled[(..., *(slice(0, self._windows(n, i)) for i, n in enumerate(x.shape[2:])))]
        return pooled


def _convert_average_pool(node, graph):
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    a = node.attributes
    kernel = list(a["kernel_shape"])
    rank = len(kernel)
    if rank not in (1, 2, 3):
        raise NotImplementedError(f"AveragePool over {rank} spatial axes")
    if any(d != 1 for d in a.get("dilations", [1] * rank)):
        raise NotImplementedError("AveragePool with dilations")
    auto_pad = a.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise NotImplementedError(f"AveragePool with auto_pad={auto_pad} (acc's import makes the pads explicit)")
    pads = [0] * 2 * rank if auto_pad == "VALID" else list(a.get("pads", [0] * 2 * rank))
    strides = list(a.get("strides", [1] * rank))
    ceil_mode, include = bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0))
    begin, end = pads[:rank], pads[rank:]
    if begin == end and not ceil_mode and all(2 * p <= k for p, k in zip(begin, kernel)):
        module = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[rank - 1](
            kernel_size=kernel, stride=strides, padding=begin, ceil_mode=ceil_mode, count_include_pad=include)
    else:
        module = PaddedAveragePool(kernel, strides, pads, ceil_mode, include)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _add_average_pool() -> None:
    """Replaces onnx2torch's AveragePool converters (opsets 7-11) and serves opset 19 too."""
    from onnx2torch.node_converters import registry

    for version in (7, 10, 11, 19):
        registry._CONVERTER_REGISTRY[registry.OperationDescription(defs.ONNX_DOMAIN, "AveragePool", version)] = _convert_average_pool


def onnx2torch():
    """The onnx2torch module, imported once with the fixes above."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    module = _stubbed_import("onnx2torch")
    _add_reduce_v18()
    _add_average_pool()
    _add_newer_ops()
    _alias_newer_versions()
    return module
