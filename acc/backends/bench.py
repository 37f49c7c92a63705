"""Latency of a model (and optionally a second one, side by side) on the host or over TVM RPC.

Each engine runs in a process of its own on the host; outputs are checked against onnxruntime
before TVM is timed; two models are timed interleaved (A, B, A, B ...) and the speed-up is the
median of the per-round ratios, which cancels drifts that hit both alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from acc.backends import compile as compile_mod
from acc.backends import rpc as rpc_mod
from acc.backends.timing import Latency, MISMATCH_EXIT, TvmRunner, compare_outputs, run_interleaved
from acc.errors import InputError, ToolchainError, VerificationError


@dataclass
class ModelBench:
    model: str  # the ONNX model (onnxruntime's reference)
    library: str
    label: str = ""  # the path the user gave, for tables
    tvm: Latency | None = None
    onnxruntime: Latency | None = None
    max_abs_diff: float = 0.0


@dataclass
class BenchResult:
    device: str
    target: str
    models: list[ModelBench]
    tvm_speedup: float | None = None  # median over rounds of time(first) / time(second)
    onnxruntime_speedup: float | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = ["| model | engine | median ms | p10 ms | p90 ms | std ms | rounds |", "|---|---|---|---|---|---|---|"]
        for m in self.models:
            for engine, lat in (("tvm", m.tvm), ("onnxruntime", m.onnxruntime)):
                if lat is not None:
                    rows.append(f"| {m.label or Path(m.model).name} | {engine} | {lat.median_ms:.3f} | {lat.p10_ms:.3f} | "
                                f"{lat.p90_ms:.3f} | {lat.std_ms:.3f} | {lat.rounds} |")
        lines = [f"device: {self.device}, target: {self.target}", "", *rows]
        if len(self.models) == 2:
            lines.append("")
            a, b = (m.label or Path(m.model).name for m in self.models)
            for engine, s in (("tvm", self.tvm_speedup), ("onnxruntime", self.onnxruntime_speedup)):
                if s is not None:
                    lines.append(f"speed-up of {b} over {a} on {engine}: {s:.2f}x (median of interleaved rounds)")
        return "\n".join(lines)


@dataclass
class _Prepared:
    onnx: str
    library: str
    meta: dict


def _prepare(path: str, target: str | None, workdir: Path, index: int, build_opts: dict, log,
             remote: bool, tvm: bool = True) -> _Prepared:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such file: {p}")
    if p.suffix == ".onnx" and not tvm:
        return _Prepared(str(p), "", {"inputs": [asdict(i) for i in compile_mod.graph_inputs(compile_mod.load_onnx(p), {})],
                                      "target_name": "onnxruntime"})
    if p.suffix == ".onnx":
        lib = workdir / f"model{index}.so"
        compile_mod.build(p, target or "host", lib, log=log, **build_opts)
        return _Prepared(str(p), str(lib), compile_mod.read_metadata(lib))
    meta = compile_mod.read_metadata(p)
    if target and target != meta.get("target_name"):
        raise InputError(f"{p} was built for target {meta.get('target_name')!r}, not {target!r}")
    triple = str((meta.get("target") or {}).get("mtriple", ""))
    if not remote and triple.startswith(("aarch64", "arm")):
        raise InputError(f"{p} was built for {meta.get('target_name')!r}: run it on the device with --rpc or --tracker")
    onnx_path = meta.get("model", "")
    if not Path(onnx_path).is_file():
        raise InputError(f"the ONNX model {p} was built from is gone ({onnx_path}); pass the .onnx instead")
    return _Prepared(onnx_path, str(p), meta)


def _make_inputs(meta: dict, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in meta["inputs"]:
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(spec["shape"]).astype(dtype))
        else:
            arrays.append(rng.integers(0, 10, size=spec["shape"]).astype(dtype))
    return arrays


def _worker(request: dict, workdir: Path, name: str) -> tuple[int, dict]:
    req_path, res_path = workdir / f"{name}.req.json", workdir / f"{name}.res.json"
    req_path.write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, "-m", "acc.backends.timing", str(req_path), str(res_path)],
                          capture_output=True, text=True)
    if proc.returncode not in (0, MISMATCH_EXIT) or not res_path.exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolchainError(f"the {request['engine']} timing process failed: {tail}")
    return proc.returncode, json.loads(res_path.read_text())


def _ratio(times: list[list[float]]) -> float | None:
    if len(times) != 2 or not times[0]:
        return None
    return float(np.median(np.asarray(times[0]) / np.asarray(times[1])))


def bench(
    model: str | os.PathLike,
    target: str | None = None,
    *,
    rpc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    compare: str | os.PathLike | None = None,
    repeat: int = 30,
    min_repeat_ms: float | None = None,
    onnxruntime: bool = True,
    tvm: bool = True,
    seed: int = 0,
    log=print,
    **build_opts,
) -> BenchResult:
    """Check `model` (and `compare`) against onnxruntime, then time them; see the module doc."""
    if repeat < 1:
        raise InputError("--repeat must be >= 1")
    if not tvm and (rpc or tracker or not onnxruntime):
        raise InputError("without TVM only onnxruntime on the host is timed")
    remote_wanted = bool(rpc or tracker)
    session = rpc_mod.connect(rpc, tracker, key) if remote_wanted else None  # fail fast, before building
    if remote_wanted and str(model).endswith(".onnx") and not (target or build_opts.get("target_json")):
        raise InputError("benchmarking an ONNX model on a device needs --target (e.g. arm64)")
    if not remote_wanted and target not in (None, "host"):
        raise InputError(f"target {target!r} runs on a device: add --rpc HOST:PORT or --tracker HOST:PORT --key K")
    device = f"rpc {rpc}" if rpc else f"tracker {tracker} key {key}" if tracker else "host"
    min_ms = (0.0 if remote_wanted else 100.0) if min_repeat_ms is None else min_repeat_ms
    paths = [str(model)] + ([str(compare)] if compare else [])

    with tempfile.TemporaryDirectory(prefix="acc-bench-") as tmp:
        workdir = Path(tmp)
        prepared = [_prepare(p, target, workdir, i, build_opts, log, remote_wanted, tvm) for i, p in enumerate(paths)]
        input_files = []
        for i, prep in enumerate(prepared):
            f = workdir / f"inputs{i}.npz"
            np.savez(f, *_make_inputs(prep.meta, seed))
            input_files.append(str(f))
        results = [ModelBench(p.onnx, p.library, Path(path).name) for p, path in zip(prepared, paths)]

        # onnxruntime first: its outputs are the reference TVM must match before it is timed.
        ort_rounds = repeat if (onnxruntime and not remote_wanted) else 0
        _, ort = _worker({"engine": "onnxruntime", "models": [p.onnx for p in prepared], "inputs": input_files,
                          "out_prefix": str(workdir / "ref"), "rounds": ort_rounds, "number": 1,
                          "min_repeat_ms": min_ms}, workdir, "ort")
        for r, lat in zip(results, ort.get("latency") or []):
            r.onnxruntime = Latency(**lat)

        if not tvm:
            tvm_times = []
        elif remote_wanted:
            tvm_times = _bench_remote(session, prepared, input_files, ort["outputs"], results, repeat, min_ms)
        else:
            code, res = _worker({"engine": "tvm", "models": [p.library for p in prepared], "inputs": input_files,
                                 "references": ort["outputs"], "out_prefix": str(workdir / "tvm"), "rounds": repeat,
                                 "number": 1, "min_repeat_ms": min_ms}, workdir, "tvm")
            for r, diff in zip(results, res["max_abs_diff"]):
                r.max_abs_diff = diff
            if code == MISMATCH_EXIT:
                bad = results[res["mismatch"]]
                raise VerificationError(f"TVM's outputs for {Path(bad.model).name} differ from onnxruntime's "
                                        f"(max abs diff {bad.max_abs_diff:.3g}); not timing a wrong library")
            tvm_times = res["times_ms"]
            for r, lat in zip(results, res["latency"]):
                r.tvm = Latency(**lat)

    target_name = prepared[0].meta.get("target_name", target or "host")
    return BenchResult(
        device, target_name, results, _ratio(tvm_times), _ratio(ort.get("times_ms") or []),
        {"repeat": repeat, "min_repeat_ms": min_ms, "seed": seed},
    )


def _bench_remote(session, prepared, input_files, ref_files, results, repeat, min_ms) -> list[list[float]]:
    try:
        runners = [TvmRunner(p.library, remote=session, upload_name=f"acc_model{i}.so") for i, p in enumerate(prepared)]
    except Exception as err:  # noqa: BLE001 - remote errors come back as TVMError text
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        raise ToolchainError(f"the device could not load the library: {lines[-1] if lines else err}") from None
    inputs = []
    for runner, r, f, ref_f in zip(runners, results, input_files, ref_files):
        data, ref = np.load(f), np.load(ref_f)
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
        inputs.append(arrays)
        runner.set_inputs(arrays)
        ok, r.max_abs_diff = compare_outputs(runner.outputs(), [ref[f"arr_{i}"] for i in range(len(ref.files))])
        if not ok:
            raise VerificationError(f"TVM's outputs on the device for {Path(r.model).name} differ from onnxruntime's "
                                    f"(max abs diff {r.max_abs_diff:.3g}); not timing a wrong library")
    times = run_interleaved(runners, inputs, repeat, 1, min_ms)
    for r, t in zip(results, times):
        r.tvm = Latency.of(t)
    return times
