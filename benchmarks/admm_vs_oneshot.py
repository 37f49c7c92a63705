"""Does ADMM beat one-shot magnitude pruning at the same training budget?

The shipped CIFAR-10 ResNet-20 pruned to 2x, 4x and 8x fewer parameters with uniform filter
rates, three ways, each with the same number of training epochs:
  admm:          E/2 epochs of ADMM (proximal W-step, auto rho, scaled dual), hard prune, E/2 of fine-tuning;
  admm-penalty:  the same with the schedule before issue 11 (penalty through the momentum, rho 0.01);
  oneshot:       magnitude hard prune of the original at once, then E epochs of fine-tuning.
Per run: the distance to the structure just before the hard prune, the validation accuracy and
loss just before and after it (the hard-prune drop ADMM exists to shrink), and the test accuracy
at the end. Near-zero purification is off so all end at exactly the same structure. Accuracy on
the CIFAR-10 test split (never used to choose anything).

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
from acc.prune.objective import DEFAULT_DISTILL_WEIGHT  # noqa: E402


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
    p.add_argument("--methods", default="admm,admm-penalty,oneshot")
    p.add_argument("--full", action="store_true", help="whole training set, 30 epochs per run (GPU)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per run (split evenly for ADMM)")
    p.add_argument("--admm-iters", type=int, default=None, help="Z/U updates (default: max(4, 2 per ADMM epoch))")
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--seeds", default="0")
    p.add_argument("--distill-weight", type=float, default=None, help="objective (default: acc's)")
    p.add_argument("--decay-norm-and-bias", action="store_true", help="weight decay on BatchNorm and biases too")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--name", default=None, help="results name (default admm_vs_oneshot[_full])")
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    epochs = args.epochs or (30 if args.full else 6)
    admm_epochs = epochs // 2
    admm_iters = args.admm_iters or max(4, 2 * admm_epochs)
    train_images = args.train_images or (None if args.full else 8000)
    test_images = args.test_images or (None if args.full else 5000)
    batch = 256 if device == "cuda" else 128
    methods = {
        "admm": dict(epochs=admm_epochs, finetune_epochs=epochs - admm_epochs, admm="on", admm_mode="proximal",
                     rho="auto", admm_iters=admm_iters),
        "admm-penalty": dict(epochs=admm_epochs, finetune_epochs=epochs - admm_epochs, admm="on",
                             admm_mode="penalty", rho=0.01, admm_iters=max(2, admm_epochs)),
        "oneshot": dict(epochs=0, finetune_epochs=epochs, admm="off"),
    }
    rows = []
    for target in [float(t) for t in args.targets.split(",")]:
        rate, exact = uniform_rate_for(args.model, target)
        for seed in [int(x) for x in args.seeds.split(",")]:
            common = dict(uniform=rate, scheme="filter", limit=train_images, test_limit=test_images, seed=seed,
                          batch_size=batch, device=device, progress=False, lr=0.01, criterion="l1",
                          purify_evaluations=0, purify=False, log=lambda *a: None,  # same structure for all
                          distill_weight=args.distill_weight, decay_norm_and_bias=args.decay_norm_and_bias)
            for method in args.methods.split(","):
                started = time.time()
                result = api.prune(args.model, args.data, **methods[method], **common)
                r = result.report
                cut = next(h for h in r["history"] if h["phase"] == "hard_prune")
                rows.append({
                    "target": target, "uniform_rate": rate, "method": method, "seed": seed,
                    "admm_epochs": r["train_config"]["admm_epochs"], "finetune_epochs": r["train_config"]["finetune_epochs"],
                    "admm_iters": r["train_config"]["admm_iters"], "admm_mode": r["train_config"]["admm_mode"],
                    "distance_start": (r["admm_distance_to_structure"] or [cut["distance_to_structure"]])[0],
                    "distance_before_hard_prune": cut["distance_to_structure"],
                    "val_accuracy_before_hard_prune": cut.get("val_accuracy_before"),
                    "val_accuracy_after_hard_prune": cut.get("val_accuracy_after"),
                    "val_loss_before_hard_prune": cut["val_loss_before"], "val_loss_after_hard_prune": cut["val_loss_after"],
                    "hard_prune_drop": cut.get("val_accuracy_before", 0) - cut.get("val_accuracy_after", 0),
                    "accuracy_before": r["accuracy_before"]["test"]["accuracy"],
                    "accuracy_after": r["accuracy_after"]["test"]["accuracy"],
                    "params_reduction": r["params"]["reduction_dense"], "flops_reduction": r["flops"]["reduction"],
                    "seconds": time.time() - started,
                })
                row = rows[-1]
                print(f"{target:g}x seed {seed} {method}: distance {row['distance_start']:.3f} -> "
                      f"{row['distance_before_hard_prune']:.3f}, hard-prune drop {100 * row['hard_prune_drop']:.1f} points "
                      f"(val loss {row['val_loss_before_hard_prune']:.3f} -> {row['val_loss_after_hard_prune']:.3f}), "
                      f"test {100 * row['accuracy_after']:.2f}% {row['seconds']:.0f} s", flush=True)
    budget = {"epochs_per_run": epochs, "admm_split": f"{admm_epochs} ADMM + {epochs - admm_epochs} fine-tune",
              "admm_iters": admm_iters, "oneshot": f"{epochs} fine-tune",
              "train_images": train_images or "all (45000 after the validation split)",
              "test_images": test_images or 10000, "device": device, "full": args.full, "seeds": args.seeds,
              "distill_weight": args.distill_weight if args.distill_weight is not None else DEFAULT_DISTILL_WEIGHT,
              "decay_norm_and_bias": args.decay_norm_and_bias}
    headers = ["target", "method", "distance before cut", "val acc before -> after cut", "drop", "test acc after", "seconds"]
    print()
    print(f"ResNet-20, CIFAR-10; budget: {budget}")
    print(table(headers, [[f"{r['target']:g}x", f"{r['method']} (seed {r['seed']})", f"{r['distance_before_hard_prune']:.3f}",
                           f"{100 * r['val_accuracy_before_hard_prune']:.1f}% -> {100 * r['val_accuracy_after_hard_prune']:.1f}%",
                           f"{100 * r['hard_prune_drop']:.1f}", f"{100 * r['accuracy_after']:.2f}%",
                           f"{r['seconds']:.0f}"] for r in rows], {2, 4, 5, 6}))
    name = args.name or ("admm_vs_oneshot" + ("_full" if args.full else ""))
    path = record.write(name, "ADMM (new and old schedule) vs one-shot magnitude pruning + fine-tuning at the same "
                        "epochs, ResNet-20 on CIFAR-10: hard-prune drop and final accuracy", rows, budget, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
