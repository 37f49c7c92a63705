"""How much faster is a fine-tuning epoch on the physically smaller model than on the masked
full-width one (issue 11, item 4)?

For each model and each parameter reduction (uniform filter rates that reach 1/N of the
parameters), the same hard prune of the same weights is fine-tuned two ways with acc's own
trainer (acc.prune.admm.Trainer): `masked` (the full-width model, masks re-applied after every
step, `--finetune-masked`) and `small` (the default: the graph rewritten and purified after the hard
prune, acc.prune.shrink_phase). The objective is what `acc prune` uses on labelled data (labels and
distillation from the original, whose forward pass costs the same in both) and, beside it,
labels alone. Timed per run: one
fine-tune epoch (the median step time x steps, steps after the first) and the transition (hard
prune, and for `small` the rewrite, verification and conversion). Runs are interleaved (masked,
small, masked, small ...); medians and the masked/small ratio are reported. `--objectives labels`
times cross-entropy alone: the teacher's full-size forward pass, the same in both, is left out.

    python benchmarks/finetune_small.py [--images 1024] [--repeats 3] [--rates 2,4,8] [--models resnet20,vgg16]

Models: ResNet-20 (models/resnet20.onnx) and VGG-16 (benchmarks/.work/trained/vgg16.onnx when it
exists, else ResNet-56 from models/, untrained: the timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import record  # noqa: E402

DATA = Path("/work/shared/datasets/cifar10/train.jpeg.npz")
TRAINED_VGG = ROOT / "benchmarks" / ".work" / "trained" / "vgg16.onnx"


def model_path(name: str, work: Path) -> tuple[str, Path]:
    if name == "resnet20":
        return "resnet20", ROOT / "models" / "resnet20.onnx"
    if name == "vgg16" and TRAINED_VGG.is_file():
        return "vgg16", TRAINED_VGG
    from models.export import build, export_onnx

    stand_in = "resnet56" if name == "vgg16" else name
    path = work / f"{stand_in}.onnx"
    export_onnx(build(stand_in), path)
    return f"{stand_in} (untrained)", path


def uniform_rate_for(cost, reduction: float) -> float:
    """The uniform filter rate whose pruned model holds 1/reduction of the parameters (bisection)."""
    target = cost.total("params") / reduction
    lo, hi = 0.0, 0.99
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost.measure(np.full(cost.size, mid), "params") > target else (lo, mid)
    return hi


class Setup:
    """One model's imported graph, analysis, data and objective, shared by every timed run."""

    def __init__(self, path: Path, images: int, batch_size: int, objective: str = "default"):
        from acc.passes.analysis import analyze
        from acc.passes.importer import normalize
        from acc.passes.load import load_model
        from acc.prune.admm import TrainConfig
        from acc.prune.bridge import TorchModel
        from acc.prune.objective import DEFAULT_DISTILL_WEIGHT, Objective, choose_supervision, output_kinds
        from acc.prune.pipeline import PruneOptions, load_training_data, resolve_input
        from acc.prune.rates import Rates

        original = load_model(path)
        image = resolve_input(original, path)
        self.model = normalize(original, image.shapes)
        self.analysis = analyze(self.model)
        shape = self.analysis.index.shape(self.analysis.index.input_names[0])
        options = PruneOptions(rates=Rates(), limit=images, validation_fraction=0.01, progress=False,
                               train=TrainConfig(admm_epochs=0, finetune_epochs=1, batch_size=batch_size))
        self.train, self.val, _, _ = load_training_data(DATA, path, options, shape)
        kinds = output_kinds(self.model)
        weight = DEFAULT_DISTILL_WEIGHT if objective == "default" else 0.0  # "labels": no teacher forward pass
        use_labels, needs_teacher = choose_supervision(kinds, True, None, weight)
        teacher = TorchModel(self.model).module if needs_teacher else None
        self.objective = Objective(teacher, use_labels=use_labels, kinds=kinds, distill_weight=weight)
        self.config = options.train

    def time_one(self, rates, small: bool) -> dict:
        """Hard prune of the original weights, then one fine-tune epoch; seconds of each part."""
        from acc.passes.channels import WEIGHT_ROLES
        from acc.prune.admm import Trainer
        from acc.prune.bridge import TorchModel
        from acc.prune.rates import build_constraints
        from acc.prune.shrink_phase import Shrinker

        weights = {m.initializer for m in self.analysis.members if m.role in WEIGHT_ROLES}
        bridge = TorchModel(self.model, trainable=weights)
        constraints = build_constraints(self.analysis, bridge, rates)
        stamps = []
        trainer = Trainer(bridge.module, constraints, bridge.tensors, self.train, self.val, self.objective,
                          replace(self.config), progress=lambda **kw: stamps.append(time.perf_counter()),
                          shrink=Shrinker(self.model, self.analysis, bridge) if small else None)
        started = time.perf_counter()
        trainer.run()
        total = time.perf_counter() - started
        steps = np.diff(stamps)
        epoch = float(np.median(steps)) * len(stamps)
        return {"epoch_s": epoch, "transition_s": max(stamps[0] - started - float(np.median(steps)), 0.0),
                "run_s": total, "steps": len(stamps),
                "trained_params": sum(p.numel() for p in trainer.module.parameters() if p.requires_grad)}


def _rows_of(label, setup, objective, args, rows) -> None:
    from acc.prune.cost import CostModel
    from acc.prune.rates import Rates

    cost = CostModel(setup.analysis)
    for reduction in [float(r) for r in args.rates.split(",")]:
        rate = uniform_rate_for(cost, reduction)
        rates = Rates(groups={g.name: rate for g in setup.analysis.prunable_groups})
        runs = {"masked": [], "small": []}
        for _ in range(args.repeats):  # interleaved: masked, small, masked, small ...
            for variant in ("masked", "small"):
                runs[variant].append(setup.time_one(rates, variant == "small"))
                print(f"  {label} {reduction:g}x {variant}: {runs[variant][-1]}", flush=True)
        med = {v: {k: statistics.median(r[k] for r in runs[v]) for k in ("epoch_s", "transition_s", "run_s")}
               for v in runs}
        rows.append({
            "model": label, "objective": objective, "reduction": reduction, "rate": rate,
            "trained_params_masked": runs["masked"][0]["trained_params"],
            "trained_params_small": runs["small"][0]["trained_params"],
            "epoch_s_masked": med["masked"]["epoch_s"], "epoch_s_small": med["small"]["epoch_s"],
            "epoch_speedup": med["masked"]["epoch_s"] / med["small"]["epoch_s"],
            "transition_s_masked": med["masked"]["transition_s"], "transition_s_small": med["small"]["transition_s"],
            "runs": runs,
        })
        _write(rows, args)  # after every row: a long run interrupted keeps what it measured


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,vgg16")
    p.add_argument("--rates", default="2,4,8", help="parameter reductions")
    p.add_argument("--images", type=int, default=1024, help="training images per epoch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: no oversubscription on a shared machine)")
    p.add_argument("--objectives", default="default,labels",
                   help="default: labels + distillation as acc prune trains; labels: cross-entropy alone (no teacher pass)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            label, path = model_path(name, Path(work))
            for objective in args.objectives.split(","):
                _rows_of(label, Setup(path, args.images, args.batch_size, objective), objective, args, rows)
    print()
    print("| model | objective | params | rate | trained params masked -> small | epoch masked (s) | epoch small (s) | speedup | transition small (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['objective']} | {r['reduction']:g}x | {r['rate']:.3f} | {r['trained_params_masked']:,} -> {r['trained_params_small']:,} "
              f"| {r['epoch_s_masked']:.2f} | {r['epoch_s_small']:.2f} | {r['epoch_speedup']:.2f}x | {r['transition_s_small']:.2f} |")
    print(f"\nwrote {_write(rows, args)}")
    return 0


def _write(rows, args) -> Path:
    budget = {"images": args.images, "batch_size": args.batch_size, "repeats": args.repeats, "threads": args.threads,
              "epochs": 1, "objectives": {"default": "labels + distillation from the original (acc prune's default on labelled data)",
                                          "labels": "cross-entropy alone (no teacher forward pass)"}}
    return record.write("finetune_small", "seconds per fine-tune epoch: masked full-width model vs physically smaller model",
                        rows, budget, args.out, load_average=os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
