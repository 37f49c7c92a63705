"""Does a shrunk model built with its original's tuned schedules (no search) run like a tuned one?

ResNet-20 (CIFAR, 1x3x32x32) is tuned by MetaSchedule with N trials per task into a fresh
database; `acc shrink --ratio 0.3` makes a narrower copy whose conv tasks are new workloads. The
copy is built (a) untuned, (b) with the database and 0 trials, so every task it can gets the
schedule of its original width, refitted and measured (acc.backends.tune_transfer), (c) tuned
from scratch with N trials in another fresh database and, time allowing, (d) seeded and then
tuned with N trials (a copy of the original's database). Each build is timed against (a)
interleaved by acc.backends.bench, which first checks its outputs against onnxruntime's.
Build times are wall seconds on the shared 2-core machine, tuning included.

    python benchmarks/tune_transfer.py [--trials 8] [--time-limit 900] [--out DIR]

Writes benchmarks/results/tune_transfer.json (rewritten after each phase).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from acc.backends import bench as bench_mod  # noqa: E402
from acc.backends import compile as compile_mod  # noqa: E402

MODEL = ROOT / "models" / "resnet20.onnx"
RATIO = 0.3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8, help="MetaSchedule trials per task (default 8)")
    ap.add_argument("--time-limit", type=float, default=900.0,
                    help="skip the optional phases (c, d) once this many seconds have passed")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tune_transfer.json"))
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "tune_transfer"))
    args = ap.parse_args()
    start = time.monotonic()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    quiet = lambda msg: None  # noqa: E731
    result = {"model": MODEL.name, "ratio": RATIO, "trials_per_task": args.trials,
              "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TVM_NUM_THREADS")}, "builds": {}, "bench": {}}

    def save() -> None:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    def build(name: str, model: Path, **opts) -> Path:
        logged = []
        t = time.monotonic()
        built = compile_mod.build(model, "host", work / f"{name}.so", log=logged.append, **opts)
        result["builds"][name] = {"seconds": round(time.monotonic() - t, 1), "tuning": built.tuning, "log": logged}
        print(f"{name}: built in {result['builds'][name]['seconds']} s {' '.join(logged)}", flush=True)
        save()
        return built.library

    half = work / "r20_half.onnx"
    subprocess.run([sys.executable, "-m", "acc.cli", "shrink", str(MODEL), "-o", str(half), "--ratio", str(RATIO)],
                   check=True, capture_output=True)
    build("original_tuned", MODEL, tune_trials=args.trials, tune_db=work / "db_original")
    shutil.copytree(work / "db_original", work / "db_seeded")  # before (b) adds the shrunk model's records
    libs = {"untuned": build("untuned", half)}
    libs["transferred"] = build("transferred", half, tune_trials=0, tune_db=work / "db_original")
    for name, opts in (("scratch", {"tune_db": work / "db_scratch"}), ("seeded", {"tune_db": work / "db_seeded"})):
        if time.monotonic() - start > args.time_limit:
            print(f"{name}: skipped (time limit)")
            continue
        libs[name] = build(name, half, tune_trials=args.trials, **opts)

    for name, lib in libs.items():
        if name == "untuned":
            continue
        res = bench_mod.bench(libs["untuned"], compare=lib, repeat=20, log=quiet)
        untuned, other = res.models
        result["bench"][name] = {
            "ms": other.tvm.median_ms, "untuned_ms": untuned.tvm.median_ms, "speedup_over_untuned": res.tvm_speedup,
            "onnxruntime_ms": other.onnxruntime.median_ms, "max_abs_diff": other.max_abs_diff,
        }
        save()
    result["seconds"] = round(time.monotonic() - start, 1)
    save()
    print(table(result))
    return 0


def table(result: dict) -> str:
    rows = [f"ResNet-20 shrunk --ratio {result['ratio']}, {result['trials_per_task']} trials/task where tuned", "",
            "| build | tasks seeded / tuned | build s | TVM ms | vs untuned | onnxruntime ms |",
            "|---|---|---|---|---|---|"]
    first = next(iter(result["bench"].values()), None)
    if first:
        rows.append(f"| untuned | - | {result['builds']['untuned']['seconds']} | {first['untuned_ms']:.2f} | 1.00x | "
                    f"{first['onnxruntime_ms']:.2f} |")
    for name, b in result["bench"].items():
        build = result["builds"][name]
        tuning = build["tuning"]
        rows.append(f"| {name} | {tuning.get('transferred', 0)} / {tuning.get('tuned', 0)} of {tuning.get('tasks')} | "
                    f"{build['seconds']} | {b['ms']:.2f} | {b['speedup_over_untuned']:.2f}x | {b['onnxruntime_ms']:.2f} |")
    rows.append(f"\noriginal ResNet-20 tuned in {result['builds']['original_tuned']['seconds']} s")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
