"""The pass protocol: a pass takes a model and returns a PassResult (the model, and whether it changed).

Passes never mutate their input; they work on a copy. A pass that cannot apply to a graph says
which node and why through an AccError subclass.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool


class Pass:
    """Subclasses implement `apply(model) -> bool` on a private copy."""

    name = "pass"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        work = onnx.ModelProto()
        work.CopyFrom(model)
        modified = self.apply(work)
        return PassResult(work, bool(modified))

    def apply(self, model: onnx.ModelProto) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class Sequence(Pass):
    """Run passes in order; with `until_fixed`, repeat the whole list until none changes the model."""

    name = "sequence"

    def __init__(self, passes: list[Pass], until_fixed: bool = False, max_rounds: int = 8):
        self.passes = passes
        self.until_fixed = until_fixed
        self.max_rounds = max_rounds

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        any_change = False
        for _ in range(self.max_rounds if self.until_fixed else 1):
            round_change = False
            for p in self.passes:
                result = p(model)
                model = result.model
                round_change |= result.modified
            any_change |= round_change
            if not round_change:
                break
        return PassResult(model, any_change)


def opset_version(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1
