"""Is `--metric latency` at least as accurate as `--metric flops` at the same measured latency?

The shipped CIFAR-10 ResNet-20 (or --model) compiled with the same data, epochs and seeds:
  latency: acc compile --metric latency --target T --rate R (widths multiples of 8, its default);
  flops:   acc compile --metric flops --rate F --round-to 8, for a few F around R, so that its
           measured speed-ups bracket the latency run's (interpolated to it).
Each run's speed-up is acc's own measurement in report.json: the original and the result timed
interleaved on the engine (`latency.speedup`). Accuracy on the CIFAR-10 test split (never chosen on).
Per seed, the FLOPs runs' (speed-up, accuracy) points are interpolated linearly at the latency run's
speed-up (when they do not bracket it, up to two more FLOPs rates are run, `bracketing_rates`); the
table gives mean and standard deviation over seeds. With `--keep DIR` every run's folder stays, and
a run whose folder already holds a report is read from it, not run again.

    python benchmarks/latency_metric.py                      # onnxruntime on the host, 2 CPU cores
    python benchmarks/latency_metric.py --target host        # untuned TVM on the host
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

from acc.autocompress import CompileOptions, compile_model  # noqa: E402
from acc.format import table  # noqa: E402
from acc.prune.search import SearchConfig  # noqa: E402

QUESTION = ("At the same measured latency (speed-up over the original, timed interleaved on the engine), is "
            "acc compile --metric latency at least as accurate as --metric flops (both with widths multiples of 8), "
            "same data, epochs and seeds?")


def run(model, data, metric, rate, seed, args, work) -> dict:
    """One acc compile (as `acc compile` runs it; SearchConfig to choose the latency run's experience rule)."""
    started = time.time()
    by = args.order_by if metric == "latency" else "params"
    out = work / (f"{metric}_{rate:g}x_s{seed}" + (f"_{by}" if metric == "latency" and by != "latency" else ""))
    search = SearchConfig(cooling=math.exp(math.log(20 / 100) / args.search_steps),
                          order_by=by)
    options = CompileOptions(rate=rate, metric=metric, rounds=1, budget_epochs=args.epochs, limit=args.limit,
                             test_limit=args.test_limit, seed=seed, progress=False, round_to=8, target=args.target,
                             search=search)
    kept = out / "report.json"
    if args.keep and kept.is_file():  # a finished run of an earlier invocation (--keep): read, not re-run
        r = json.loads(kept.read_text())
        started -= r.get("seconds", 0.0)
    else:
        r = compile_model(model, data, out, options, log=lambda *a, **k: None).report
    lat = r["latency"]
    return {"metric": metric, "rate": rate, "seed": seed, "speedup": lat["speedup"], "before_ms": lat["before_ms"],
            "after_ms": lat["after_ms"], "accuracy": r["accuracy_after"]["test"]["accuracy"],
            "flops_reduction": r["flops"]["reduction"], "params_reduction": r["params"]["reduction_dense"],
            "predicted_ms": lat.get("predicted_ms"), "goal_ms": lat.get("goal_ms"), "seconds": time.time() - started}


def bracketing_rates(points: list[dict], speedup: float, tried: set) -> list[float]:
    """A FLOPs rate to run next when the runs so far do not bracket `speedup` (their speed-ups all
    above or all below it): the nearest rate's excess over 1 scaled by the speed-ups' excess
    (speed-up grows about linearly with the FLOPs cut at these rates), a little beyond."""
    low, high = min(points, key=lambda p: p["speedup"]), max(points, key=lambda p: p["speedup"])
    if speedup < low["speedup"]:
        rate = 1 + (low["rate"] - 1) * 0.9 * (speedup - 1) / max(low["speedup"] - 1, 1e-6)
    elif speedup > high["speedup"]:
        rate = 1 + (high["rate"] - 1) * 1.1 * (speedup - 1) / max(high["speedup"] - 1, 1e-6)
    else:
        return []
    rate = round(max(rate, 1.05), 2)
    while rate in tried and 1.05 < rate:  # run before and timing noise kept it outside: step further out
        rate = round(max(1 + (rate - 1) * (0.8 if speedup < low["speedup"] else 1.25), 1.05), 2)
    return [] if rate in tried else [rate]


def at_speedup(points: list[dict], speedup: float) -> float | None:
    """Accuracy interpolated at `speedup` from (speed-up, accuracy) points; None outside their range."""
    pts = sorted((p["speedup"], p["accuracy"]) for p in points)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs[0] <= speedup <= xs[-1]:
        return None
    return float(np.interp(speedup, xs, ys))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "resnet20.onnx"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--target", default="onnxruntime")
    ap.add_argument("--rate", type=float, default=2.0, help="latency reduction asked of the latency run")
    ap.add_argument("--flops-rates", default="2,3,4,6", help="FLOPs reductions of the comparison runs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--search-steps", type=int, default=4)
    ap.add_argument("--order-by", default="latency", choices=["latency", "params", "flops"],
                    help="the latency run's experience rule (acc's default with --metric latency: latency)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep every run's output folder (report.json, model.onnx) under DIR, to look into a run afterwards")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    flops_rates = [float(x) for x in args.flops_rates.split(",")]
    rows, summary = [], []
    with tempfile.TemporaryDirectory(prefix="acc-latency-metric-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        for seed in seeds:
            lat_row = run(args.model, args.data, "latency", args.rate, seed, args, work)
            flops_rows = [run(args.model, args.data, "flops", f, seed, args, work) for f in flops_rates]
            for _ in range(2):  # the FLOPs runs must bracket the latency run's measured speed-up
                extra = bracketing_rates(flops_rows, lat_row["speedup"], {r["rate"] for r in flops_rows})
                flops_rows += [run(args.model, args.data, "flops", f, seed, args, work) for f in extra]
            rows += [lat_row, *flops_rows]
            summary.append({"seed": seed, "speedup": lat_row["speedup"], "latency_accuracy": lat_row["accuracy"],
                            "flops_accuracy_at_speedup": at_speedup(flops_rows, lat_row["speedup"])})
            print(f"seed {seed}: latency run {lat_row['speedup']:.2f}x faster, {100 * lat_row['accuracy']:.2f} %; "
                  f"flops runs " + ", ".join(f"{r['rate']:g}x: {r['speedup']:.2f}x faster {100 * r['accuracy']:.2f} %"
                                             for r in flops_rows), flush=True)
    paired = [s for s in summary if s["flops_accuracy_at_speedup"] is not None]

    def stat(values):
        return (100 * float(np.mean(values)), 100 * float(np.std(values))) if values else (float("nan"), float("nan"))

    lat_mean, lat_std = stat([s["latency_accuracy"] for s in paired])
    flops_mean, flops_std = stat([s["flops_accuracy_at_speedup"] for s in paired])
    speed = [s["speedup"] for s in summary]
    shown = table(["method", "measured speed-up", "test accuracy (mean ± std)", "seeds"], [
        ["--metric latency", f"{np.mean(speed):.2f}x ± {np.std(speed):.2f}", f"{lat_mean:.2f} ± {lat_std:.2f} %", len(paired)],
        ["--metric flops (interpolated)", "same", f"{flops_mean:.2f} ± {flops_std:.2f} %", len(paired)],
    ], {1, 2, 3})
    print(shown)
    budget = {"epochs": args.epochs, "rounds": 1, "order_by": args.order_by, "limit": args.limit, "test_limit": args.test_limit,
              "search_steps": args.search_steps, "target": args.target, "rate": args.rate, "flops_rates": flops_rates}
    path = record.write(f"latency_metric_{args.target}_{args.order_by}", QUESTION, rows, budget, args.out, table=shown,
                        summary=summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
