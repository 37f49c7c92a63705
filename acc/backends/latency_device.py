"""Where latency is measured: an engine (TVM for a target, or onnxruntime on the host) and, for a
device target, the RPC server or tracker that reaches it. Checked before any work starts; opens
the layer timer the latency metric needs; measures the original and the result side by side for
report.json's `latency` section (and warns when the result is the slower one).
"""

from __future__ import annotations

from dataclasses import dataclass

from acc.errors import InputError

ONNXRUNTIME = "onnxruntime"  # a target name: the ONNX model itself, run by onnxruntime on this machine
SLOWER_MARGIN = 0.03  # interleaved medians of two equal models differ by up to ~3 % on a busy machine


@dataclass
class LatencyDevice:
    target: str
    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None
    tune_trials: int = 0
    tune_db: str | None = None

    @property
    def engine(self) -> str:
        return ONNXRUNTIME if self.target == ONNXRUNTIME else "tvm"

    @property
    def remote(self) -> bool:
        return bool(self.rpc or self.tracker)

    def describe(self) -> str:
        if self.rpc:
            return f"rpc {self.rpc}"
        if self.tracker:
            return f"tracker {self.tracker} key {self.key}"
        return "host"


def check(target: str | None, rpc: str | None, tracker: str | None, key: str | None, metric: str = "params",
          tune_trials: int = 0, tune_db: str | None = None) -> LatencyDevice | None:
    """The device the options name (None: no target), or a one-line error for contradictory options."""
    from acc.backends import rpc as rpc_mod

    if metric == "latency" and not target:
        raise InputError("--metric latency needs --target: the engine whose milliseconds it counts "
                         "(host, arm64, rpi4, ..., or onnxruntime)")
    if (rpc or tracker or key) and not target:
        raise InputError("--rpc/--tracker/--key name the device of a --target: give --target too")
    if rpc and tracker:
        raise InputError("give either --rpc HOST:PORT or --tracker HOST:PORT --key KEY, not both")
    if tracker and not key:
        raise InputError("--tracker needs --key (the device key the server registered with)")
    if key and not tracker:
        raise InputError("--key names a device behind a --tracker: give --tracker HOST:PORT too")
    if rpc:
        rpc_mod.parse_hostport(rpc, "--rpc")
    if tracker:
        rpc_mod.parse_hostport(tracker, "--tracker")
    if not target:
        return None
    if target == ONNXRUNTIME:
        if rpc or tracker:
            raise InputError("--target onnxruntime runs on this machine: drop --rpc/--tracker")
        if tune_trials or tune_db:
            raise InputError("--tune-trials/--tune-db tune a TVM build: they do not apply to --target onnxruntime")
        return LatencyDevice(target)
    from acc.backends import targets, toolchain

    spec = targets.resolve(target)
    toolchain.resolve_cc(spec)  # a missing cross compiler is named now, with its Debian package
    if metric == "latency" and not spec.is_host and not (rpc or tracker):
        raise InputError(f"--metric latency on target {target!r} is measured on the device: give --rpc HOST:PORT "
                         "or --tracker HOST:PORT --key KEY")
    if tune_trials < 0:
        raise InputError("--tune-trials must be >= 0")
    return LatencyDevice(target, rpc, tracker, key, tune_trials, tune_db)


def open_timer(device: LatencyDevice, cache_dir=None, log=print):
    """The layer timer for `device` (acc.backends.layer_latency); its RPC session, if any, is open."""
    from acc.backends import layer_latency

    if device.engine == ONNXRUNTIME:
        return layer_latency.OrtTimer(cache_dir=cache_dir, log=log)
    from acc.backends import rpc as rpc_mod
    from acc.backends import targets, toolchain

    spec = targets.resolve(device.target)
    session = rpc_mod.connect(device.rpc, device.tracker, device.key) if device.remote else None
    from acc.backends.tune import default_db_root

    tuned = bool(device.tune_trials or device.tune_db)
    return layer_latency.TvmTimer(spec, session=session, device=device.describe(), cc=toolchain.resolve_cc(spec),
                                  tune_root=(device.tune_db or default_db_root()) if tuned else None,
                                  tracker=device.tracker, key=device.key, cache_dir=cache_dir, log=log,
                                  rounds=3 if device.remote else 5, min_repeat_ms=0 if device.remote else 20)


def tune_original(model, device: LatencyDevice, input_shapes=None, log=print) -> None:
    """Tune the original's tasks once (--tune-trials) before its latency table is timed: the table's
    layers then get those schedules at their widths, and the result's build starts from them."""
    import tempfile
    from pathlib import Path

    from acc.backends.compile import build

    if device.engine != "tvm" or not device.tune_trials:
        return
    with tempfile.TemporaryDirectory(prefix="acc-tune-original-") as tmp:
        build(model, device.target, Path(tmp) / "original.so", tune_trials=device.tune_trials, tune_db=device.tune_db,
              tracker=device.tracker, key=device.key, input_shapes=input_shapes, log=log)


def measure(original, result, device: LatencyDevice | None, repeat: int = 15, min_repeat_ms: float = 25.0,
            latency_target: bool = False, log=print) -> dict:
    """The original and the result timed side by side (interleaved, outputs checked against
    onnxruntime first): on the device's engine, and on onnxruntime here whenever it runs here.
    `latency_target`: the result was searched for latency on this device (the warning says so)."""
    from acc.backends.bench import bench

    quiet = lambda *a, **k: None  # noqa: E731 - the builds' own lines are noise in a compile log
    out: dict = {}
    if device is not None and device.engine == "tvm":
        build_opts = {"tune_trials": device.tune_trials}
        if device.tune_db:
            build_opts["tune_db"] = device.tune_db
        res = bench(str(original), device.target, rpc=device.rpc, tracker=device.tracker, key=device.key,
                    compare=str(result), repeat=repeat, log=quiet,
                    min_repeat_ms=None if device.remote else min_repeat_ms, **build_opts)
        a, b = res.models
        out = {"engine": "tvm", "target": device.target, "device": device.describe(),
               "tuned": bool(device.tune_trials or device.tune_db), "tune_trials": device.tune_trials, "before_ms": a.tvm.median_ms, "after_ms": b.tvm.median_ms,
               "speedup": res.tvm_speedup, "rounds": repeat}
        if a.onnxruntime is not None:
            out["onnxruntime"] = _side(a.onnxruntime, b.onnxruntime, res.onnxruntime_speedup)
    else:
        res = bench(str(original), compare=str(result), tvm=False, repeat=repeat, min_repeat_ms=min_repeat_ms,
                    log=quiet)
        a, b = res.models
        out = {"engine": ONNXRUNTIME, "target": ONNXRUNTIME if device else None, "device": "host",
               "before_ms": a.onnxruntime.median_ms, "after_ms": b.onnxruntime.median_ms,
               "speedup": res.onnxruntime_speedup, "rounds": repeat}
    # The engine the result is built for; a speed-up within SLOWER_MARGIN of 1 is timing noise.
    slower = [f"{out['engine']} ({out['speedup']:.2f}x)"] if (out["speedup"] or 1.0) < 1.0 - SLOWER_MARGIN else []
    if slower:
        why = ("the latency table predicted it faster: a model this small is mostly per-op overhead, or the "
               "machine was busy while timing" if latency_target else "odd channel counts miss the engine's fast "
               "kernels; use --round-to 8, or --metric latency with this target")
        out["warning"] = f"the compressed model runs slower than the original on {' and '.join(slower)}: {why}"
        log(f"warning: {out['warning']}")
    return out


def _side(before, after, speedup) -> dict:
    return {"before_ms": before.median_ms, "after_ms": after.median_ms, "speedup": speedup}
