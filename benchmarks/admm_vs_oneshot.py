"""Does ADMM beat one-shot magnitude pruning at the same training budget?

The shipped CIFAR-10 ResNet-20 pruned to 2x, 4x and 8x fewer parameters with uniform filter
rates, two ways, each with the same number of training epochs:
  ADMM:     E/2 epochs of ADMM, hard prune, purification, E/2 epochs of masked fine-tuning;
  one-shot: L1-norm channel pruning at once, then E epochs of masked fine-tuning.
Near-zero purification is off so both end at exactly the same structure.
Accuracy on the CIFAR-10 test split (never used to choose anything).

    python benchmarks/admm_vs_oneshot.py            # 2 CPU cores, about an hour
    python benchmarks/admm_vs_oneshot.py --full     # the whole training set, longer schedules (GPU)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

from acc import api  # noqa: E402
from acc.format import table  # noqa: E402
from acc.passes.analysis import analyze  # noqa: E402
from acc.passes.counting import count  # noqa: E402
from acc.passes.importer import import_model  # noqa: E402
from acc.passes.oneshot import ratio_plan  # noqa: E402
from acc.passes.rewrite import rewrite  # noqa: E402


def uniform_rate_for(model_path, target: float) -> tuple[float, float]:
    """The uniform filter rate whose one-shot structure has `target`x fewer parameters (bisection)."""
    analysis = analyze(import_model(model_path))
    before = count(analysis.model).params

    def reduction(rate):
        return before / count(rewrite(analysis, ratio_plan(analysis, rate))).params

    lo, hi = 0.01, 0.97
    for _ in range(30):
        mid = (lo + hi) / 2
        if reduction(mid) < target:
            lo = mid
        else:
            hi = mid
    return hi, reduction(hi)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "resnet20.onnx"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--targets", default="2,4,8")
    p.add_argument("--full", action="store_true", help="whole training set, 30 epochs per run (GPU)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per run (split evenly for ADMM)")
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    args = p.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    epochs = args.epochs or (30 if args.full else 6)
    train_images = args.train_images or (None if args.full else 8000)
    test_images = args.test_images or (None if args.full else 5000)
    batch = 256 if device == "cuda" else 128
    rows = []
    for target in [float(t) for t in args.targets.split(",")]:
        rate, exact = uniform_rate_for(args.model, target)
        common = dict(uniform=rate, scheme="filter", limit=train_images, test_limit=test_images, seed=0,
                      batch_size=batch, device=device, progress=False, lr=0.01,
                      purify_evaluations=0)  # same structure for both: no near-zero purification here
        for method in ("admm", "oneshot"):
            started = time.time()
            if method == "admm":
                result = api.prune(args.model, args.data, epochs=epochs // 2, finetune_epochs=epochs - epochs // 2,
                                   admm_iters=max(2, epochs // 2), **common)
            else:
                result = api.prune(args.model, args.data, epochs=0, finetune_epochs=epochs, criterion="l1", **common)
            r = result.report
            rows.append({
                "target": target, "uniform_rate": rate, "method": method,
                "accuracy_before": r["accuracy_before"]["test"]["accuracy"],
                "accuracy_after": r["accuracy_after"]["test"]["accuracy"],
                "params_before": r["params"]["before"], "params_after": r["params"]["after_dense"],
                "params_reduction": r["params"]["reduction_dense"],
                "flops_before": r["flops"]["before"], "flops_after": r["flops"]["after"],
                "flops_reduction": r["flops"]["reduction"],
                "purification_removed": sum(sum(h.get("removed", {}).values()) for h in r["history"] if h["phase"] == "purify"),
                "seconds": time.time() - started,
            })
            row = rows[-1]
            print(f"{target:g}x {method}: {100 * row['accuracy_after']:.2f}% "
                  f"({row['params_reduction']:.2f}x params, {row['flops_reduction']:.2f}x FLOPs) {row['seconds']:.0f} s", flush=True)
    budget = {"epochs_per_run": epochs, "admm_split": f"{epochs // 2} ADMM + {epochs - epochs // 2} fine-tune",
              "oneshot": f"{epochs} fine-tune", "train_images": train_images or "all (45000 after the validation split)",
              "test_images": test_images or 10000, "device": device, "full": args.full, "seed": 0}
    headers = ["target", "method", "test acc before", "test acc after", "params", "FLOPs", "seconds"]
    print()
    print(f"ResNet-20, CIFAR-10; budget: {budget}")
    print(table(headers, [[f"{r['target']:g}x", r["method"], f"{100 * r['accuracy_before']:.2f}%",
                           f"{100 * r['accuracy_after']:.2f}%", f"{r['params_reduction']:.2f}x",
                           f"{r['flops_reduction']:.2f}x", f"{r['seconds']:.0f}"] for r in rows], {2, 3, 4, 5, 6}))
    path = record.write("admm_vs_oneshot" + ("_full" if args.full else ""),
                        "ADMM vs one-shot L1 + fine-tuning at the same epochs, ResNet-20 on CIFAR-10", rows, budget, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
