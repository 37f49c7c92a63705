"""Load and check an ONNX file, with external data allowed only from the model's own folder."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from acc.errors import InputError


def _external_locations(model: onnx.ModelProto):
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            yield tensor.name, info.get("location", "")


def _check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    root = folder.resolve()
    for tensor_name, location in _external_locations(model):
        target = (folder / location).resolve()
        if os.path.isabs(location) or root not in target.parents:
            raise InputError(
                f"external data of tensor '{tensor_name}' points outside the model's folder: {location}"
            )
        if not target.is_file():
            raise InputError(f"external data file of tensor '{tensor_name}' is missing: {target}")


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read, check and return the model at `path` (InputError on anything a user must fix)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {p}")
    if not p.is_file():
        raise InputError(f"not a file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as err:
        raise InputError(f"not a readable ONNX model: {p} ({type(err).__name__})") from None
    if not model.graph.node and not model.graph.input:
        raise InputError(f"not an ONNX model (empty graph): {p}")
    _check_external_data(model, p.parent)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(p.parent))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the external data of {p}: {err}") from None
    check_model(model, source=str(p))
    return model


def check_model(model: onnx.ModelProto, source: str = "model") -> None:
    try:
        if model.ByteSize() < 2**31 - 2**20:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "invalid graph"
        raise InputError(f"{source} is not a valid ONNX model: {first}") from None
