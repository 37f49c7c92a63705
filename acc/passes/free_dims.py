"""Give a rewritten model back the free (symbolic) dims of the model it came from.

The import pins every free input dim (the batch to 1, height and width to the working size), so
that shape inference, folding and training see one shape, and everything derived from the
imported graph declares that shape. A model that took any batch (or any size) should come out
taking them too: `keep_free_dims` writes the original's dim names back on the rewritten graph's
inputs and outputs and drops the intermediate shapes (value_info) pinned with them; a runtime
infers those from the inputs it is given.

That is only right when nothing downstream baked the pinned shape in (an exporter's shape
arithmetic folded into a Reshape target or a Resize size at import). So the result is run at a
second shape (batch 3, and where height and width were free, twice the size) against the
original graph imported at that shape with the pruned weights in it; if the two differ, or the
original cannot be imported there, the pinned model is kept and the reason returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from acc.errors import AccError
from acc.passes.importer import normalize
from acc.passes.inputs import declared_dims, value_dims
from acc.passes.verify import verify_equal

SECOND_BATCH = 3


@dataclass
class FreeDims:
    model: onnx.ModelProto  # with the original's free dims where they were kept, else as given
    free: dict[str, list]  # input/output name -> its dims in the original (int, name, or None) where any is free
    second_shapes: dict[str, list[int]] | None  # the shapes the kept dims were checked at
    reason: str | None = None  # why the dims stay pinned (None: kept, or nothing was free)

    @property
    def kept(self) -> bool:
        return bool(self.free) and self.reason is None

    def to_json(self) -> dict:
        return {"free": self.free, "kept": self.kept, "checked_at": self.second_shapes, "reason": self.reason}


def free_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Inputs and outputs with at least one free dim -> their declared dims."""
    dims = dict(declared_dims(model))
    for vi in model.graph.output:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims[vi.name] = value_dims(vi)
    return {name: d for name, d in dims.items() if any(not isinstance(x, int) for x in d)}


def second_shapes(original: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """The pinned `shapes`, with each dim that is free in `original` moved: the batch (axis 0) to
    3 (2 when it was 3), any other to twice its size."""
    declared = declared_dims(original)
    moved = {}
    for name, shape in shapes.items():
        dims = declared.get(name, shape)
        moved[name] = [s if isinstance(d, int) else (SECOND_BATCH if s != SECOND_BATCH else 2) if axis == 0 else 2 * s
                       for axis, (d, s) in enumerate(zip(dims, shape))]
    return moved


def with_dims(model: onnx.ModelProto, dims: dict[str, list]) -> onnx.ModelProto:
    """A copy whose named inputs/outputs declare `dims` (int, dim_param name, or None: unknown) and
    that has no intermediate shapes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    for vi in list(out.graph.input) + list(out.graph.output):
        if vi.name not in dims or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for w in dims[vi.name]:
            d = shape.dim.add()
            if isinstance(w, int):
                d.dim_value = w
            elif w:
                d.dim_param = w
    return out


def _with_weights(model: onnx.ModelProto, changed: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """`model` with the `changed` initializers put in; KeyError naming one it does not hold."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    slots = {t.name: t for t in out.graph.initializer}
    for name, tensor in changed.items():
        if name not in slots or list(slots[name].dims) != list(tensor.dims):
            raise KeyError(name)
        slots[name].CopyFrom(tensor)
    return out


def keep_free_dims(original: onnx.ModelProto, rewritten: onnx.ModelProto, imported: onnx.ModelProto,
                   masked: onnx.ModelProto) -> FreeDims:
    """`rewritten` (derived from `imported`, the original pinned at one shape, whose weights became
    `masked`'s) with the original's free dims, checked at a second shape; see the module docstring."""
    free = free_dims(original)
    if not free:
        return FreeDims(rewritten, {}, None)
    second = second_shapes(original, _pinned(imported))
    candidate = with_dims(rewritten, free)
    shapeless = {o.name for o in original.graph.output if not o.type.tensor_type.HasField("shape")}
    for vi in candidate.graph.output:
        if vi.name in shapeless:
            vi.type.tensor_type.ClearField("shape")
    try:
        reference = normalize(original, second)
    except AccError as err:
        return FreeDims(rewritten, free, second, f"the original model cannot be imported at {_spell(second)}: {err}")
    before = {t.name: t for t in imported.graph.initializer}
    changed = {t.name: t for t in masked.graph.initializer
               if t.name in before and t.SerializeToString() != before[t.name].SerializeToString()}
    try:
        reference = _with_weights(reference, changed)
    except KeyError as missing:
        return FreeDims(rewritten, free, second, f"the pruned weight {missing} has no place in the original at another shape")
    try:
        verify_equal(with_dims(reference, second), with_dims(candidate, second), what=f"the model at {_spell(second)}")
    except Exception as err:  # a VerificationError, or onnxruntime refusing the shape
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return FreeDims(rewritten, free, second, f"at {_spell(second)} it does not compute what the original does ({first})")
    return FreeDims(candidate, free, second)


def _pinned(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {name: [d if isinstance(d, int) else 1 for d in dims] for name, dims in declared_dims(model).items()}


def _spell(shapes: dict[str, list[int]]) -> str:
    return ", ".join(f"{name}={'x'.join(map(str, s))}" for name, s in shapes.items())
