"""Helpers of the per-model speed benchmarks: the models of models/ as imported ONNX graphs, and
interleaved medians (A, B, A, B, ...: the machines here are noisy, so ratios come from one run)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


def random_graphs(names: list[str]):
    """(name, imported ONNX graph) per model of models/, random weights (speed does not depend on them)."""
    from acc.passes.importer import import_model
    from models.export import build, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(build(name), path)
            yield name, import_model(path)


def interleaved_medians(runs: dict, repeats: int) -> dict[str, float]:
    """Milliseconds per call of each callable of `runs`, the median of `repeats` interleaved rounds after one warm-up."""
    for run in runs.values():
        run()
    times = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            started = time.perf_counter()
            run()
            times[key].append(1000 * (time.perf_counter() - started))
    return {key: statistics.median(t) for key, t in times.items()}
