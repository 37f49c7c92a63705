"""How much does taking the original's targets in one pass save in the refit after the cut?

The refit (acc/prune/posttrain/refit.py) solves every layer that reads removed channels against the
original model's output of that layer. Per layer and batch it ran the original up to the layer; now
one forward pass of the original per batch gives every layer's target rows (up to a memory budget).
For each model of models/ (random weights: speed does not depend on them), a 50 % cut is refitted
on the calibration images of a training run's cut (CUT_RECOVERY_IMAGES) both ways, interleaved;
medians, the ratio, and the memory the targets take.

    python benchmarks/refit_speed.py
    python benchmarks/refit_speed.py --models resnet20,resnet56 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402
from timing import interleaved_medians, random_graphs  # noqa: E402


def main() -> None:
    import torch

    from acc.data.tensor_data import TensorData
    from acc.format import table
    from acc.passes.analysis import analyze
    from acc.passes.mask import masked_model
    from acc.passes.oneshot import ratio_plan
    from acc.prune.bridge import TorchModel
    from acc.prune.posttrain import CUT_RECOVERY_IMAGES
    from acc.prune.posttrain import refit as refit_module
    from acc.prune.posttrain.calibration_data import split_fit

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,resnet56,mobilenetv2")
    p.add_argument("--images", type=int, default=CUT_RECOVERY_IMAGES)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    n_est, n_val = split_fit(args.images)
    generator = torch.Generator().manual_seed(0)
    estimate = TensorData(torch.randn(n_est, 3, 32, 32, generator=generator))
    validate = TensorData(torch.randn(n_val, 3, 32, 32, generator=generator))
    cache_bytes = refit_module.TARGET_CACHE_BYTES
    rows = []
    for name, graph in random_graphs(args.models.split(",")):
        analysis = analyze(graph)
        plan = ratio_plan(analysis, args.ratio)
        masked = masked_model(analysis, plan)

        def run(budget):
            def once():
                refit_module.TARGET_CACHE_BYTES = budget
                bridge, reference = TorchModel(masked), TorchModel(graph)
                layers = refit_module.layers_to_refit(analysis, plan, bridge, reference)
                refit_module.refit(layers, bridge.module, reference.module, estimate, validate)
            return once

        ms = interleaved_medians({"per_layer": run(0), "one_pass": run(cache_bytes)}, args.repeats)
        refit_module.TARGET_CACHE_BYTES = cache_bytes
        reference = TorchModel(graph)
        targets = refit_module.OriginalTargets(refit_module.layers_to_refit(analysis, plan, TorchModel(masked), reference),
                                               args.images, seed=0)
        targets.collect(reference.module, estimate, "estimate")
        targets.collect(reference.module, validate, "validate")
        row = {"model": name, "images": args.images, "ratio": args.ratio, "layers": len(targets.layers),
               "per_layer_ms": ms["per_layer"], "one_pass_ms": ms["one_pass"],
               "speedup": ms["per_layer"] / ms["one_pass"], "threads": torch.get_num_threads(),
               "target_mib": targets.bytes / 2**20, "layers_in_one_pass": sum(r is not None for r in targets.rows.values())}
        rows.append(row)
        print(f"{name}: per layer {row['per_layer_ms'] / 1000:.1f} s, one pass {row['one_pass_ms'] / 1000:.1f} s "
              f"({row['speedup']:.2f}x), targets {row['target_mib']:.0f} MiB", flush=True)
    print(table(["model", "layers", "images", "per layer s", "one pass s", "speed-up", "targets MiB"],
                [[r["model"], r["layers"], r["images"], f"{r['per_layer_ms'] / 1000:.1f}", f"{r['one_pass_ms'] / 1000:.1f}",
                  f"{r['speedup']:.2f}x", f"{r['target_mib']:.0f}"] for r in rows], {1, 2, 3, 4, 5, 6}))
    path = record.write("refit_speed", "the refit after a cut: the original run up to each layer vs one pass of the "
                        "original for every layer's targets, same cut, same images, interleaved medians", rows,
                        {"images": args.images, "ratio": args.ratio, "repeats": args.repeats,
                         "weights": "random (models/)", "target_cache_bytes": cache_bytes}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
