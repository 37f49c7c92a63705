"""The Python API: one function per CLI command, returning data instead of printing.

    import acc.api as acc
    info = acc.analyze("model.onnx")
    result = acc.shrink("model.onnx", ratio=0.5, output="small.onnx", report="report.json")
"""

from __future__ import annotations

import json
import os

from acc import atomic
from acc.passes.analysis import analyze as _analyze
from acc.passes.importer import import_model
from acc.passes.shrink import ShrinkResult
from acc.passes.shrink import shrink as _shrink
from acc.passes.summary import describe


def analyze(model: str | os.PathLike, input_shapes: dict | None = None) -> dict:
    """Channel groups, boundaries and totals of a model (the data behind `acc analyze --json`)."""
    return describe(_analyze(import_model(model, input_shapes)))


def shrink(
    model: str | os.PathLike,
    output: str | os.PathLike | None = None,
    ratio: float | None = None,
    criterion: str = "l1",
    report: str | os.PathLike | None = None,
    input_shapes: dict | None = None,
) -> ShrinkResult:
    """Lossless purification (ratio=None) or one-shot pruning of `ratio` of every group.

    The result is verified before anything is written; outputs are written atomically.
    """
    for path in (output, report):
        if path is not None:
            atomic.check_output_path(path)
    result = _shrink(model, ratio=ratio, criterion=criterion, input_shapes=input_shapes)
    if output is not None:
        atomic.write_bytes(output, result.model.SerializeToString())
    if report is not None:
        atomic.write_text(report, json.dumps(result.report(), indent=2))
    return result
