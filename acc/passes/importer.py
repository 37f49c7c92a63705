"""The import stage: load, check and normalise a model so that every later stage sees one form."""

from __future__ import annotations

import os

import onnx

from acc.passes.base import Sequence
from acc.passes.load import load_model
from acc.passes.normalize import (
    BatchAgnosticReshape,
    ConstantsToInitializers,
    DropReshapeAllowzero,
    DropUnusedInitializers,
    ExplicitPads,
    FixInputDims,
    FoldConstants,
    InlineConstantIf,
    NonNegativeAxes,
    InferShapes,
    InitializersNotInputs,
    NameNodes,
    UpgradeOpset,
)


def normalize(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """Return a semantically equal model in acc's canonical form (static shapes, no Constant nodes)."""
    pipeline = Sequence(
        [
            UpgradeOpset(),
            InitializersNotInputs(),
            ConstantsToInitializers(),
            FixInputDims(input_shapes),
            NameNodes(),
            Sequence([InferShapes(), FoldConstants(), InlineConstantIf(), DropReshapeAllowzero(), DropUnusedInitializers()],
                     until_fixed=True),
            ExplicitPads(),
            BatchAgnosticReshape(),
            NonNegativeAxes(),
            DropUnusedInitializers(),
            InferShapes(),
        ]
    )
    return pipeline(model).model


def import_model(source: str | os.PathLike | onnx.ModelProto, input_shapes=None) -> onnx.ModelProto:
    model = source if isinstance(source, onnx.ModelProto) else load_model(source)
    return normalize(model, input_shapes)
