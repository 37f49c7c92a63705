"""Does intermediate-feature distillation recover more accuracy after the cut at a short budget?

`acc compile` of a model with and without `--feature-distill W` (acc/prune/feature_distill.py),
everything else equal (data, seed, rate, epochs, search), over several seeds; each seed's pair runs
side by side as two one-thread processes, so the wall times are read in one run. Accuracy on the
data's test split (never used to choose anything). Defaults: the demo's command (the shipped
ResNet-20 and CIFAR-10 sample at 2x fewer parameters, 10 epochs, widths in multiples of 8).

    python benchmarks/feature_distill.py --seeds 0,1,2 --weights 0,1      # 2 CPU cores, ~25 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

sys.path.insert(0, str(ROOT))
from acc.format import table  # noqa: E402

DEMO_ARGS = ["--rounds", "1", "--budget-epochs", "10", "--search-steps", "6", "--search-finetune-steps", "30",
             "--eval-images", "256", "--round-to", "8"]


def _run(model: str, data: str, rate: str, seed: int, weight: float, extra: list[str], out: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "acc.cli", "compile", model, "--rate", rate, "--data", data, "-o", str(out),
           "--seed", str(seed), "--feature-distill", str(weight), "--no-progress", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), time.perf_counter()


def _row(out: Path, seed: int, weight: float, seconds: float) -> dict:
    r = json.loads((out / "report.json").read_text())
    last = r["rounds_detail"][-1]
    return {"seed": seed, "feature_distill": weight, "test_accuracy": last["accuracy_after"]["test"]["accuracy"],
            "test_accuracy_before": last["accuracy_before"]["test"]["accuracy"],
            "params_reduction": r["params"]["reduction_dense"] if "reduction_dense" in r["params"] else None,
            "flops_reduction": r["flops"].get("reduction"), "seconds": round(seconds, 1),
            "widths": [w["after"] for w in r["widths"]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "resnet20.onnx"))
    p.add_argument("--data", default=str(ROOT / "models" / "data" / "cifar10_demo"))
    p.add_argument("--rate", default="2x")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--weights", default="0,1", help="feature-distillation weights run side by side per seed")
    p.add_argument("--extra", default=" ".join(DEMO_ARGS), help="further acc compile options (default: the demo's)")
    p.add_argument("--name", default="feature_distill")
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    args = p.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            runs = []
            for w in weights:
                out = Path(tmp) / f"s{seed}_w{w:g}"
                runs.append((w, out, *_run(args.model, args.data, args.rate, seed, w, args.extra.split(), out)))
            for w, out, proc, started in runs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    print(f"seed {seed}, weight {w:g} failed: {err.strip().splitlines()[-1:]}", file=sys.stderr)
                    return 1
                rows.append(_row(out, seed, w, time.perf_counter() - started))
                print(f"seed {seed}, --feature-distill {w:g}: {rows[-1]['test_accuracy']:.2%} in {rows[-1]['seconds']:.0f} s",
                      flush=True)
    summary = []
    for w in weights:
        acc = [r["test_accuracy"] for r in rows if r["feature_distill"] == w]
        sec = [r["seconds"] for r in rows if r["feature_distill"] == w]
        summary.append({"feature_distill": w, "seeds": len(acc), "mean": statistics.mean(acc),
                        "std": statistics.stdev(acc) if len(acc) > 1 else 0.0, "seconds_mean": statistics.mean(sec)})
    print(table(["--feature-distill", "seeds", "test accuracy", "seconds"],
                [[f"{s['feature_distill']:g}", s["seeds"], f"{s['mean']:.2%} ± {s['std']:.2%}", f"{s['seconds_mean']:.0f}"]
                 for s in summary]))
    path = record.write(args.name, __doc__.splitlines()[0], rows,
                        {"model": args.model, "data": args.data, "rate": args.rate, "extra": args.extra,
                         "threads_per_run": 1, "runs_side_by_side": len(weights)},
                        args.out, summary=summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
