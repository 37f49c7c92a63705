"""How much do the refit's one-pass captures save after the cut?

The refit (acc/prune/posttrain/refit.py) solves every layer that reads removed channels against the
original model's output of that layer, fed the pruned model's own input to it. Per layer and batch
it ran both models up to the layer. Now one forward pass of the original per batch gives every
layer's target rows (up to a memory budget), and one sweep of the pruned model, paused at each
layer while it is refitted, gives every layer's input (acc/prune/posttrain/sweep.py). For each model
of models/ (random weights: speed does not depend on them), a 50 % cut is refitted on the
calibration images of a training run's cut (CUT_RECOVERY_IMAGES) three ways, interleaved: per
layer, one pass of the original only (the refit before the sweep), one pass of each; medians, the
ratios, the memory the targets take and the sweep's peak of live activations.

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
    from acc.prune.posttrain.sweep import LayerSweep

    class NoSweep(LayerSweep):
        @staticmethod
        def supports(model, modules):
            return False

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

        def run(budget, sweep):
            def once():
                refit_module.TARGET_CACHE_BYTES = budget
                refit_module.LayerSweep = sweep_class if sweep else NoSweep
                bridge, reference = TorchModel(masked), TorchModel(graph)
                layers = refit_module.layers_to_refit(analysis, plan, bridge, reference)
                refit_module.refit(layers, bridge.module, reference.module, estimate, validate)
            return once

        peaks = []

        class Sweep(LayerSweep):
            def __iter__(self):
                yield from super().__iter__()
                peaks.append(self.peak)

        sweep_class = Sweep
        ms = interleaved_medians({"per_layer": run(0, False), "one_pass": run(cache_bytes, False),
                                  "sweep": run(cache_bytes, True)}, args.repeats)
        refit_module.TARGET_CACHE_BYTES, refit_module.LayerSweep = cache_bytes, LayerSweep
        reference = TorchModel(graph)
        targets = refit_module.OriginalTargets(refit_module.layers_to_refit(analysis, plan, TorchModel(masked), reference),
                                               args.images, seed=0)
        targets.collect(reference.module, estimate, "estimate")
        targets.collect(reference.module, validate, "validate")
        row = {"model": name, "images": args.images, "ratio": args.ratio, "layers": len(targets.layers),
               "per_layer_ms": ms["per_layer"], "one_pass_ms": ms["one_pass"], "sweep_ms": ms["sweep"],
               "speedup": ms["per_layer"] / ms["one_pass"], "sweep_speedup": ms["per_layer"] / ms["sweep"],
               "sweep_over_one_pass": ms["one_pass"] / ms["sweep"], "threads": torch.get_num_threads(),
               "target_mib": targets.bytes / 2**20, "layers_in_one_pass": sum(r is not None for r in targets.rows.values()),
               "sweep_peak_mib": max(peaks) / 2**20}
        rows.append(row)
        print(f"{name}: per layer {row['per_layer_ms'] / 1000:.1f} s, one pass of the original {row['one_pass_ms'] / 1000:.1f} s, "
              f"of both {row['sweep_ms'] / 1000:.1f} s ({row['sweep_speedup']:.2f}x; {row['sweep_over_one_pass']:.2f}x over the "
              f"original's pass alone), targets {row['target_mib']:.0f} MiB, sweep peak {row['sweep_peak_mib']:.0f} MiB", flush=True)
    print(table(["model", "layers", "images", "per layer s", "original one pass s", "both one pass s", "speed-up",
                 "targets MiB", "sweep peak MiB"],
                [[r["model"], r["layers"], r["images"], f"{r['per_layer_ms'] / 1000:.1f}", f"{r['one_pass_ms'] / 1000:.1f}",
                  f"{r['sweep_ms'] / 1000:.1f}", f"{r['sweep_speedup']:.2f}x", f"{r['target_mib']:.0f}",
                  f"{r['sweep_peak_mib']:.0f}"] for r in rows], {1, 2, 3, 4, 5, 6, 7, 8}))
    path = record.write("refit_speed", "the refit after a cut: both models run up to each layer, one pass of the "
                        "original for every layer's targets, and that with one sweep of the pruned model for every "
                        "layer's inputs; same cut, same images, interleaved medians", rows,
                        {"images": args.images, "ratio": args.ratio, "repeats": args.repeats,
                         "weights": "random (models/)", "target_cache_bytes": cache_bytes}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
