"""Does a model shrunk to 2x and 4x fewer FLOPs run 2x and 4x faster, and do widths rounded to 8 help?

ResNet-20, ResNet-18, MobileNetV2 and VGG-16 (CIFAR, batch 1, random weights: latency does not
depend on them) against their `acc shrink --ratio R` versions, R the uniform ratio found by
bisection on the counted FLOPs (acc.prune.cost.CostModel, the rule the plan follows) so that the
shrunk model has 2x or 4x fewer FLOPs; each plain and with `--round-to 8` (every group keeps a
multiple of 8 channels; R bisected again for it). The FLOPs of each row are counted on the real
shrunk graph. Each cell: original and shrunk timed interleaved (A, B, A, B ...) in one process
per engine (acc.backends.bench), the median of the per-round ratios as the speed-up, and the
efficiency speed-up / FLOPs reduction (1.0: the shrunk model is as much faster as it is smaller).

Engines: onnxruntime and TVM untuned on the host (one bench call: TVM's outputs are checked
against onnxruntime's before it is timed); TVM tuned by MetaSchedule with a stated trial budget
(database under benchmarks/.work/latency/tune, kept between runs, so a re-run tunes only new
tasks); TVM on the emulated arm64 device (qemu; absolute times are not hardware times, ratios are
the figure), only when its rootfs is already built (~/.cache/acc/arm64-rootfs). Host engines run
with their own default thread counts (2 on the 2-core machine), as in earlier runs.

Phases run in order (host for every model, then tuned, then arm64) and the JSON is rewritten
after each one, so a run cut short keeps what it measured. Writes
benchmarks/results/latency_flops.json; benchmarks/results/latency.json holds the earlier
question (`--ratio 0.5` only, 3 models), made by this script before it took FLOPs targets.

    python benchmarks/latency.py [--models a,b] [--rates 2,4] [--engines onnxruntime,tvm,tuned,arm64]
                                 [--trials N] [--tune-models a,b] [--no-arm] [--time-limit S] [--full] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import record  # noqa: E402
from acc.backends import bench as bench_mod  # noqa: E402
from acc.backends import compile as compile_mod  # noqa: E402

MODELS = ["resnet20", "resnet18", "mobilenetv2", "vgg16"]
ENGINES = ["onnxruntime", "tvm", "tuned", "arm64"]
ROUND_TO = [1, 8]
WORK = ROOT / "benchmarks" / ".work" / "latency"
ROOTFS = Path.home() / ".cache" / "acc" / "arm64-rootfs"
QUESTION = ("Realized speed-up of ResNet-20, ResNet-18, MobileNetV2 and VGG-16 (CIFAR, batch 1) shrunk by a "
            "uniform `acc shrink --ratio` to 2x and 4x fewer FLOPs, plain and with --round-to 8, over the "
            "original on onnxruntime, TVM untuned and TVM tuned on the host and TVM on an emulated arm64 "
            "device; and that speed-up divided by the FLOPs reduction (goal >= 0.8 for VGG-16/ResNet-18 on "
            "the host).")
quiet = lambda msg: None  # noqa: E731


def uniform_ratio(cost, target: float) -> float:
    """The smallest uniform ratio at which the cost model counts `target`x fewer FLOPs (bisection;
    FLOPs fall monotonically with the ratio, in steps with --round-to)."""
    total, n = cost.total("flops"), len(cost.names)
    reached = lambda r: total / cost.flops(np.full(n, r)) >= target  # noqa: E731
    lo, hi = 0.0, 0.95
    if not reached(hi):
        return hi
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return hi  # unrounded: at a step's edge a rounded ratio can fall back below it


def prepare(name: str, targets: list[float], folder: Path) -> tuple[Path, list[dict]]:
    """Export `name` and shrink it to each FLOPs target, plain and rounded; one row per shrunk model."""
    import torch

    from acc.passes.analysis import analyze
    from acc.passes.importer import import_model
    from acc.prune.cost import CostModel
    from models.export import build, export_onnx, randomize_batchnorm

    torch.manual_seed(0)
    orig = folder / f"{name}.onnx"
    export_onnx(randomize_batchnorm(build(name)), orig)
    analysis = analyze(import_model(orig))
    rows = []
    for target in targets:
        for k in ROUND_TO:
            ratio = uniform_ratio(CostModel(analysis, round_to=k), target)
            tag = f"{name}_{target:g}x_r{k}"
            shrunk, report = folder / f"{tag}.onnx", folder / f"{tag}.json"
            subprocess.run([sys.executable, "-m", "acc.cli", "shrink", str(orig), "-o", str(shrunk), "--ratio",
                            str(ratio), "--round-to", str(k), "--report", str(report)], check=True,
                           capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            rep = json.loads(report.read_text())
            narrowed = [g for g in rep["groups"] if g["width_after"] < g["width_before"]]
            rows.append({"model": name, "target": target, "round_to": k, "ratio": ratio, "onnx": str(shrunk),
                         "flops_original": rep["before"]["flops"], "flops_shrunk": rep["after"]["flops"],
                         "flops_reduction": rep["before"]["flops"] / rep["after"]["flops"],
                         "params_reduction": rep["before"]["params"] / rep["after"]["params"],
                         "groups_narrowed": len(narrowed),
                         "widths_not_multiple_of_8": sum(g["width_after"] % 8 != 0 for g in narrowed)})
    return orig, rows


def cell(res: bench_mod.BenchResult, engine: str, flops_reduction: float) -> dict:
    a, b = (getattr(m, engine) for m in res.models)
    speedup = res.onnxruntime_speedup if engine == "onnxruntime" else res.tvm_speedup
    return {"original_ms": a.median_ms, "shrunk_ms": b.median_ms, "original_p10_p90": [a.p10_ms, a.p90_ms],
            "shrunk_p10_p90": [b.p10_ms, b.p90_ms], "speedup": speedup, "efficiency": speedup / flops_reduction,
            "rounds": a.rounds}


def time_rows(rows: list[dict], lib: Path, engines: list[str], key: str, run, **opts) -> None:
    """Each row's shrunk model against the original (prebuilt `lib`), interleaved; cells under `key`."""
    for row in rows:
        if run.out_of_time(f"{row['model']} {row['target']:g}x r{row['round_to']} {key}"):
            continue
        t0 = time.time()
        res = bench_mod.bench(lib, compare=row["onnx"], log=quiet, **opts)
        gc.collect()  # a remote session in a reference cycle stays open, and the RPC server serves one at a time
        for engine in engines:
            row[key if engine == "tvm" else engine] = cell(res, engine, row["flops_reduction"])
        row.setdefault("seconds", {})[key] = round(time.time() - t0, 1)
        run.save()
        run.log(f"{row['model']} {row['target']:g}x r{row['round_to']} {key}: "
            + ", ".join(f"{e} {row[key if e == 'tvm' else e]['speedup']:.2f}x" for e in engines))


def fmt(c: dict | None) -> str:
    if not c:
        return "–"
    return f"{c['original_ms']:.2f} / {c['shrunk_ms']:.2f}: {c['speedup']:.2f}x ({c['efficiency']:.2f})"


def table(rows: list[dict], budget: dict) -> str:
    lines = [f"Latency, batch 1, ms: original / shrunk: speed-up (speed-up / FLOPs reduction). Run: {budget['mode']} "
             f"budget, {budget['host_rounds']} interleaved rounds; TVM tuned: {budget['trials_per_task']} "
             f"MetaSchedule trials per task for {', '.join(budget['tuned_models']) or 'none'}.", "",
             "| model | FLOPs | round-to | ratio | FLOPs reduction | widths not x8 | onnxruntime | TVM untuned | "
             "TVM tuned | TVM arm64 (emulated) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target']:g}x | {r['round_to'] if r['round_to'] > 1 else '–'} | "
                     f"{r['ratio']:.3f} | {r['flops_original'] / 1e6:.1f}M → {r['flops_shrunk'] / 1e6:.1f}M "
                     f"({r['flops_reduction']:.2f}x) | {r['widths_not_multiple_of_8']}/{r['groups_narrowed']} | "
                     f"{fmt(r.get('onnxruntime'))} | {fmt(r.get('tvm_untuned'))} | {fmt(r.get('tvm_tuned'))} | "
                     f"{fmt(r.get('arm64_emulated_tvm'))} |")
    return "\n".join(lines)


class Run:
    """The rows measured so far, the budget, and the time limit: rewritten to the JSON after each cell."""

    def __init__(self, budget: dict, out: str, time_limit: float | None):
        self.rows, self.budget, self.out = [], budget, out
        self.started, self.time_limit = time.time(), time_limit
        budget["time_limit_s"], budget["skipped_for_time"] = time_limit, []

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.started:6.0f} s] {msg}", file=sys.stderr, flush=True)

    def out_of_time(self, what: str) -> bool:
        late = self.time_limit is not None and time.time() - self.started > self.time_limit
        if late:
            self.budget["skipped_for_time"].append(what)
        return late

    def save(self) -> str:
        self.budget["wall_s"] = round(time.time() - self.started, 1)
        text = table(self.rows, self.budget)
        public = [{k: v for k, v in r.items() if k != "onnx"} for r in self.rows]
        record.write("latency_flops", QUESTION, public, self.budget, self.out, table=text)
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    ap.add_argument("--rates", default="2,4", help="FLOPs reductions to shrink to (default 2,4)")
    ap.add_argument("--engines", default="onnxruntime,tvm,tuned,arm64", help="of " + ",".join(ENGINES))
    ap.add_argument("--trials", type=int, default=None, help="MetaSchedule trials per task (default 8, --full 64)")
    ap.add_argument("--tune-models", default=None, help="models to tune (default resnet20; --full all)")
    ap.add_argument("--repeat", type=int, default=15, help="interleaved timing rounds on the host")
    ap.add_argument("--arm-repeat", type=int, default=3, help="timing rounds on the emulated arm64 device")
    ap.add_argument("--arm-models", default="resnet20", help="models timed on the emulated device (--full all)")
    ap.add_argument("--no-arm", action="store_true", help="skip the emulated arm64 device")
    ap.add_argument("--time-limit", type=float, default=None, metavar="S",
                    help="start no new cell after S seconds (the JSON lists what was skipped)")
    ap.add_argument("--full", action="store_true", help="every model tuned (64 trials) and on arm64, no time limit")
    ap.add_argument("--out", default=str(record.RESULTS))
    args = ap.parse_args(argv)
    models = args.models.split(",")
    targets = [float(t.rstrip("x")) for t in args.rates.split(",")]
    engines = args.engines.split(",")
    unknown = set(models) - set(MODELS) | set(engines) - set(ENGINES)
    if unknown:
        ap.error(f"unknown models/engines: {', '.join(sorted(unknown))}")
    trials = args.trials if args.trials is not None else (64 if args.full else 8)
    tune_models = [m for m in (MODELS if args.full else (args.tune_models or "resnet20").split(",")) if m in models]
    tune_models = tune_models if "tuned" in engines and trials > 0 else []
    arm_models = models if args.full else [m for m in args.arm_models.split(",") if m in models]
    arm_note = None
    if args.no_arm or "arm64" not in engines:
        arm_models, arm_note = [], "not asked for"
    elif not ROOTFS.is_dir():
        arm_models, arm_note = [], f"skipped: no cached rootfs at {ROOTFS} (building it needs root and debootstrap)"
    budget = {"mode": "full" if args.full else "default", "trials_per_task": trials, "tuned_models": tune_models,
              "tune_db": str(WORK / "tune") + " (kept between runs: tasks with records are not tuned again)",
              "host_rounds": args.repeat, "arm64_rounds": args.arm_repeat, "arm64_models": arm_models,
              "arm64_note": arm_note, "min_repeat_ms_host": 100, "batch": 1, "input": "1x3x32x32",
              "weights": "random init (torch seed 0), BN statistics randomised (seed 0)",
              "threads": "engine defaults", "load_average_at_start": os.getloadavg()}
    run = Run(budget, args.out, None if args.full else args.time_limit)
    folder = WORK / "models"
    folder.mkdir(parents=True, exist_ok=True)
    prepared = {}
    for name in models:
        run.log(f"{name}: export and shrink to {', '.join(f'{t:g}x' for t in targets)}, round-to {ROUND_TO}")
        prepared[name] = prepare(name, targets, folder)
        run.rows += prepared[name][1]
    host = [e for e in ("onnxruntime", "tvm") if e in engines]
    for name in models if host else []:
        orig, rows = prepared[name]
        compile_mod.build(orig, "host", folder / f"{name}.so", log=quiet)
        time_rows(rows, folder / f"{name}.so", host, "tvm_untuned", run, target="host", repeat=args.repeat)
    for name in tune_models:
        orig, rows = prepared[name]
        if run.out_of_time(f"{name} tuning"):
            continue
        lib, t0 = folder / f"{name}_tuned.so", time.time()
        run.log(f"{name}: tuning the original, {trials} trials per task")
        compile_mod.build(orig, "host", lib, tune_trials=trials, tune_db=WORK / "tune", log=quiet)
        budget.setdefault("tune_original_s", {})[name] = round(time.time() - t0, 1)
        time_rows(rows, lib, ["tvm"], "tvm_tuned", run, target="host", repeat=args.repeat, onnxruntime=False,
                  tune_trials=trials, tune_db=WORK / "tune")
    if arm_models and not run.out_of_time("arm64"):
        from acc.backends import emulated_arm64

        device = emulated_arm64.start_server(log=run.log)
        try:
            for name in arm_models:
                orig, rows = prepared[name]
                compile_mod.build(orig, "arm64", folder / f"{name}_arm64.so", log=quiet)
                time_rows(rows, folder / f"{name}_arm64.so", ["tvm"], "arm64_emulated_tvm", run, target="arm64",
                          rpc=device.address, repeat=args.arm_repeat)
        finally:
            device.stop()
    budget["load_average_at_end"] = os.getloadavg()
    print(run.save())
    return 0


if __name__ == "__main__":
    sys.exit(main())
