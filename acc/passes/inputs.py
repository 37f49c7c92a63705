"""A model's inputs as declared, and the image input that `acc prune` and `acc compile` train on.

Training feeds one tensor: the model must have one 4-D floating-point input, NCHW or NHWC. Its
layout is the one given (`--layout`, or "layout" in MODEL.preprocess.json), else read from the
shape where that is unambiguous: a side of at most 4 is the channels, sides above 4 (or free) the
image, so [N, 3, H, W] is NCHW and [1, 224, 224, 3] is NHWC; otherwise NCHW. A given layout that
the shape contradicts is refused. The shape it is pinned at: `--input-shape`, else the declared
dims with a free batch set to 1 and free height and width set from the preprocessing size.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from acc.errors import InputError

LAYOUTS = ("NCHW", "NHWC")
MAX_CHANNELS = 4  # a side this small reads as channels, a larger one as height or width
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
SUPPORTED = "one 4-D float image input, NCHW or NHWC"


def declared_dims(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Each real input (not an initializer) -> its dims: an int, a dim_param name, or None (unknown)."""
    inits = {t.name for t in model.graph.initializer}
    return {vi.name: value_dims(vi) for vi in model.graph.input if vi.name not in inits}


def value_dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """A tensor's declared dims: an int, a dim_param name, or None (unknown)."""
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return dims


def spell(dims) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def check_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]] | None) -> None:
    """Every `--input-shape` names an input, with its rank, positive dims, and the fixed dims it has."""
    declared = declared_dims(model)
    for name, shape in (shapes or {}).items():
        if name not in declared:
            raise InputError(f"--input-shape names no input of the model: '{name}' (inputs: {', '.join(declared) or 'none'})")
        dims = declared[name]
        if len(shape) != len(dims):
            raise InputError(f"--input-shape {name}={spell(shape)}: input '{name}' has rank {len(dims)} ({spell(dims)}), "
                             f"the given shape has rank {len(shape)}")
        if min(shape, default=1) < 1:
            raise InputError(f"--input-shape {name}={spell(shape)}: dims must be positive")
        for d, s in zip(dims, shape):
            if isinstance(d, int) and d != s:
                raise InputError(f"--input-shape {name}={spell(shape)} does not fit the model's shape {spell(dims)}")


def infer_layout(dims) -> str | None:
    """NCHW or NHWC when a 4-D shape says so unambiguously (dims: ints, or None/str when free)."""
    if len(dims) != 4:
        return None

    def channels(d):
        return isinstance(d, int) and d <= MAX_CHANNELS

    def side(d):
        return not isinstance(d, int) or d > MAX_CHANNELS

    if channels(dims[1]) and side(dims[2]) and side(dims[3]):
        return "NCHW"
    if channels(dims[3]) and side(dims[1]) and side(dims[2]):
        return "NHWC"
    return None


@dataclass(frozen=True)
class ImageInput:
    name: str
    layout: str
    declared: tuple  # the dims as the model declares them (int, dim_param name or None)
    shape: tuple[int, ...]  # the shape the run works at

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return tuple(self.shape[1:3]) if self.layout == "NHWC" else tuple(self.shape[2:])

    @property
    def channels(self) -> int:
        return self.shape[3] if self.layout == "NHWC" else self.shape[1]

    @property
    def shapes(self) -> dict[str, list[int]]:
        """As `input_shapes` for the import (acc.passes.importer.normalize)."""
        return {self.name: list(self.shape)}

    def to_json(self) -> dict:
        return {"name": self.name, "layout": self.layout, "declared": list(self.declared), "shape": list(self.shape)}


def image_input(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None, layout: str | None = None,
                size: tuple[int, int] | None = None, layout_from: str = "--layout") -> ImageInput:
    """The one image input of `model` and the shape to work at (see the module docstring).
    `layout_from` names where a given layout came from, for the error that refuses it."""
    if layout is not None and layout not in LAYOUTS:
        raise InputError(f"{layout_from} must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    check_input_shapes(model, shapes)
    declared = declared_dims(model)
    inits = {t.name for t in model.graph.initializer}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input if vi.name not in inits}
    if len(declared) != 1 or len(next(iter(declared.values()))) != 4 or next(iter(types.values())) not in FLOAT_TYPES:
        listed = ", ".join(f"'{n}' {spell(d)} {onnx.TensorProto.DataType.Name(types[n]).lower()}" for n, d in declared.items())
        raise InputError(f"pruning needs a model with {SUPPORTED}; this one has {listed or 'no inputs'}")
    name, dims = next(iter(declared.items()))
    given = (shapes or {}).get(name)
    if given is not None:
        dims = [int(s) for s in given]
    inferred = infer_layout(dims)
    if layout is not None and inferred is not None and inferred != layout:
        raise InputError(f"{layout_from} {layout} contradicts input '{name}' of shape {spell(dims)}, which reads as {inferred}")
    layout = layout or inferred or "NCHW"
    spatial = (1, 2) if layout == "NHWC" else (2, 3)
    channel = 3 if layout == "NHWC" else 1
    shape = list(dims)
    if not isinstance(shape[0], int):
        shape[0] = 1
    if not isinstance(shape[channel], int):
        raise InputError(f"input '{name}' ({spell(declared[name])}, {layout}) has a free channel dim: give --input-shape {name}=...")
    free = [axis for axis in spatial if not isinstance(shape[axis], int)]
    if free and size is None:
        example = [1, 3, 224, 224] if layout == "NCHW" else [1, 224, 224, 3]
        example[channel] = shape[channel]
        raise InputError(f"input '{name}' ({spell(declared[name])}) has a free height or width: give --input-shape "
                         f"{name}={spell(example)} or \"size\": [height, width] in MODEL.preprocess.json")
    for axis in free:
        shape[axis] = int(size[spatial.index(axis)])
    return ImageInput(name, layout, tuple(declared[name]), tuple(int(d) for d in shape))
