"""Which training recipe recovers the most accuracy after a hard prune at a short budget?

The shipped CIFAR-10 ResNet-20, one-shot magnitude (L1) pruning to a uniform filter rate, then
fine-tuning of the masked model; one variant per row, everything else equal (data, seed, epochs):
  objective:  distillation weight a in (1 - a) * cross-entropy + a * T^2 * KL(teacher || student), T = 4;
  schedule:   cosine, cosine with 10 % warm-up, one-cycle, learning-rate rewinding (acc/prune/schedule.py);
  decay:      weight decay on BatchNorm and biases too, or on the conv/linear weights only.
Accuracy on the CIFAR-10 test split (never used to choose anything).

    python benchmarks/training_recipe.py --train-images 1500 --epochs 4     # 2 CPU cores, ~30 min
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
from admm_vs_oneshot import uniform_rate_for  # noqa: E402

from acc import api  # noqa: E402
from acc.format import table  # noqa: E402

BASE = dict(distill_weight=0.5, schedule="cosine", warmup=0.0, decay_norm_and_bias=True)
VARIANTS = {
    "a=0": dict(distill_weight=0.0), "a=0.5": {}, "a=0.9": dict(distill_weight=0.9), "a=1": dict(distill_weight=1.0),
    "warmup": dict(warmup=0.1), "onecycle": dict(schedule="onecycle"), "rewind": dict(schedule="rewind"),
    "no-bn-decay": dict(decay_norm_and_bias=False),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "resnet20.onnx"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--target", type=float, default=2.0, help="parameter reduction (default 2x)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-images", type=int, default=1500)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rate, exact = uniform_rate_for(args.model, args.target)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.variants.split(","):
            recipe = {**BASE, **VARIANTS[name]}
            started = time.time()
            r = api.prune(args.model, args.data, uniform=rate, scheme="filter", criterion="l1", epochs=0,
                          finetune_epochs=args.epochs, admm="off", limit=args.train_images, test_limit=args.test_images,
                          seed=seed, lr=0.01, device=args.device, progress=False, purify=False, purify_evaluations=0,
                          log=lambda *a: None, **recipe).report
            rows.append({"variant": name, "seed": seed, **recipe, "target": args.target, "uniform_rate": rate,
                         "params_reduction": r["params"]["reduction_dense"],
                         "accuracy_before": r["accuracy_before"]["test"]["accuracy"],
                         "accuracy_after": r["accuracy_after"]["test"]["accuracy"],
                         "val_accuracy_after": r["accuracy_after"]["val"].get("accuracy"),
                         "seconds": time.time() - started})
            print(f"{name} seed {seed}: test {100 * rows[-1]['accuracy_after']:.2f}% {rows[-1]['seconds']:.0f} s", flush=True)
    budget = {"epochs": args.epochs, "method": "one-shot L1 + masked fine-tuning", "train_images": args.train_images,
              "test_images": args.test_images, "seeds": args.seeds, "lr": 0.01, "device": args.device}
    print()
    print(f"ResNet-20, CIFAR-10, {args.target:g}x parameters (uniform filter rate {rate:.3f}); budget: {budget}")
    print(table(["variant", "seed", "test acc before", "test acc after", "seconds"],
                [[r["variant"], r["seed"], f"{100 * r['accuracy_before']:.2f}%", f"{100 * r['accuracy_after']:.2f}%",
                  f"{r['seconds']:.0f}"] for r in rows], {2, 3, 4}))
    path = record.write("training_recipe", "Objective, learning-rate schedule and weight decay of fine-tuning after a "
                        "one-shot hard prune, ResNet-20 on CIFAR-10", rows, budget, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
