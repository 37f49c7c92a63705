"""How fast do acc's models run, and how much faster are their `acc shrink --ratio 0.5` versions?

For ResNet-20, ResNet-18 (CIFAR) and MobileNetV2 of models/, and their shrunk versions: on the host
onnxruntime, TVM untuned and TVM tuned (MetaSchedule, budget stated), original and shrunk timed
interleaved on each engine, each engine in its own process; on the emulated arm64 device (qemu)
TVM untuned, original vs shrunk (emulated absolute times are not hardware times; ratios are the
figure). Speed-ups sit next to the FLOPs reduction that bounds them.

    python benchmarks/latency.py [--full] [--out DIR] [--trials N] [--tune-models a,b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


sys.path.insert(0, str(Path(__file__).resolve().parent))
import record  # noqa: E402
from acc.backends import bench as bench_mod  # noqa: E402
from acc.backends import emulated_arm64  # noqa: E402

MODELS = ["resnet20", "resnet18", "mobilenetv2"]
QUESTION = ("Latency of ResNet-20, ResNet-18 and MobileNetV2 (CIFAR, batch 1) on onnxruntime, TVM untuned and "
            "TVM tuned on the host, and on an emulated arm64 device; speed-up of the `acc shrink --ratio 0.5` "
            "model over the original on each engine, next to its FLOPs reduction.")


def export(name: str, folder: Path) -> tuple[Path, Path, dict]:
    from models.export import build, export_onnx, randomize_batchnorm

    orig = folder / f"{name}.onnx"
    export_onnx(randomize_batchnorm(build(name)), orig)
    shrunk, report = folder / f"{name}_shrunk.onnx", folder / f"{name}_shrunk.json"
    subprocess.run([sys.executable, "-m", "acc.cli", "shrink", str(orig), "-o", str(shrunk), "--ratio", "0.5",
                    "--report", str(report)], check=True, capture_output=True)
    return orig, shrunk, json.loads(report.read_text())


def side_by_side(res: bench_mod.BenchResult, engine: str) -> dict:
    a, b = (getattr(m, engine) for m in res.models)
    speedup = res.tvm_speedup if engine == "tvm" else res.onnxruntime_speedup
    return {"original_ms": a.median_ms, "shrunk_ms": b.median_ms, "original_p10_p90": [a.p10_ms, a.p90_ms],
            "shrunk_p10_p90": [b.p10_ms, b.p90_ms], "speedup": speedup, "rounds": a.rounds}


def fmt(cell: dict | None) -> str:
    if not cell:
        return "–"
    return f"{cell['original_ms']:.2f} / {cell['shrunk_ms']:.2f} ({cell['speedup']:.2f}x)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="tune every model with 64 trials per task")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--trials", type=int, default=None, help="MetaSchedule trials per conv/matmul task")
    ap.add_argument("--tune-models", default=None, help="comma-separated models to tune (default resnet20)")
    ap.add_argument("--repeat", type=int, default=15, help="timing rounds on the host")
    ap.add_argument("--arm-repeat", type=int, default=3, help="timing rounds on the emulated arm64 device")
    ap.add_argument("--no-arm", action="store_true")
    args = ap.parse_args(argv)
    trials = args.trials if args.trials is not None else (64 if args.full else 8)
    tune_models = MODELS if args.full else (args.tune_models or "resnet20").split(",")
    quiet = lambda msg: None  # noqa: E731
    rows, started = [], time.time()

    with tempfile.TemporaryDirectory(prefix="acc-latency-") as tmp:
        folder = Path(tmp)
        device = None
        if not args.no_arm:
            device = emulated_arm64.start_server(log=lambda m: print(m, file=sys.stderr))
        try:
            for name in MODELS:
                orig, shrunk, report = export(name, folder)
                row = {"model": name, "flops_original": report["before"]["flops"],
                       "flops_shrunk": report["after"]["flops"],
                       "flops_reduction": report["before"]["flops"] / report["after"]["flops"],
                       "params_original": report["before"]["params"], "params_shrunk": report["after"]["params"]}
                print(f"[{time.time() - started:6.0f} s] {name}: host untuned", file=sys.stderr)
                res = bench_mod.bench(orig, "host", compare=shrunk, repeat=args.repeat, log=quiet)
                row["onnxruntime"] = side_by_side(res, "onnxruntime")
                row["tvm_untuned"] = side_by_side(res, "tvm")
                row["tvm_tuned"] = None
                if name in tune_models and trials > 0:
                    print(f"[{time.time() - started:6.0f} s] {name}: tuning {trials} trials/task", file=sys.stderr)
                    t0 = time.time()
                    res = bench_mod.bench(orig, "host", compare=shrunk, repeat=args.repeat, onnxruntime=False,
                                          tune_trials=trials, tune_db=folder / "tune", log=quiet)
                    row["tvm_tuned"] = side_by_side(res, "tvm")
                    row["tvm_tuned"]["tune_and_build_s"] = time.time() - t0
                row["arm64_emulated_tvm"] = None
                if device is not None:
                    print(f"[{time.time() - started:6.0f} s] {name}: emulated arm64", file=sys.stderr)
                    res = bench_mod.bench(orig, "arm64", rpc=device.address, compare=shrunk,
                                          repeat=args.arm_repeat, log=quiet)
                    row["arm64_emulated_tvm"] = side_by_side(res, "tvm")
                rows.append(row)
        finally:
            if device is not None:
                device.stop()

    budget = {"mode": "full" if args.full else "default", "trials_per_task": trials, "tuned_models": tune_models,
              "tuned_tasks": "conv/matmul tasks of original and shrunk, fresh database",
              "host_rounds": args.repeat, "arm64_rounds": args.arm_repeat, "min_repeat_ms_host": 100,
              "batch": 1, "input": "1x3x32x32", "weights": "random init, BN statistics randomised (seed 0)",
              "wall_s": round(time.time() - started, 1)}
    lines = [f"Latency, batch 1, ms: original / shrunk (speed-up). Run: {budget['mode']} budget, "
             f"{trials} MetaSchedule trials per task for {', '.join(tune_models)}.", "",
             "| model | FLOPs orig → shrunk (reduction) | onnxruntime | TVM untuned | TVM tuned | "
             "TVM arm64 (emulated) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['flops_original'] / 1e6:.1f}M → {r['flops_shrunk'] / 1e6:.1f}M "
                     f"({r['flops_reduction']:.2f}x) | {fmt(r['onnxruntime'])} | {fmt(r['tvm_untuned'])} | "
                     f"{fmt(r['tvm_tuned'])} | {fmt(r['arm64_emulated_tvm'])} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"question": QUESTION, "table": table, "rows": rows, "budget": budget, "machine": record.machine(),
              "versions": record.versions()}
    (out / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
