"""Does a search candidate score faster when it trains in channels-last memory, per model?

The search scores each candidate by a one-shot cut, BatchNorm re-estimation, a short fine-tune of
the physically smaller model and a validation pass (acc.prune.search.OneShotScorer). The round
chooses the memory layout once (acc.prune.scoring.candidate_layout) and every scorer trains its
candidates in it. This benchmark times one candidate (every group at rate 0.5, the search's
default 20 fine-tune steps of 64 images, 256 validation images) in both layouts, interleaved, on
CIFAR-10 images, and prints what the round would choose and both energies (they differ by float
noise, which a few fine-tune steps amplify).

    python benchmarks/search_layout.py
    python benchmarks/search_layout.py --models resnet20,mobilenetv2 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402
from timing import interleaved_medians, random_graphs  # noqa: E402


def main() -> None:
    import numpy as np
    import onnx
    import torch

    from acc.autocompress import scorer_inputs
    from acc.format import table
    from acc.passes.analysis import analyze
    from acc.prune.cost import CostModel
    from acc.prune.pipeline import PruneOptions
    from acc.prune.rates import Rates
    from acc.prune.search import SearchConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,resnet56,mobilenetv2,vgg16")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = SearchConfig(eval_images=256, finetune_steps=20)

    rows = []
    for name, graph in random_graphs(args.models.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(graph, path)
            analysis = analyze(graph)
            cost = CostModel(analysis)
            options = PruneOptions(rates=Rates(), limit=2000, progress=False)
            inputs = scorer_inputs(graph, analysis, path, args.data, options, config, None, cost)
            chosen = inputs.channels_last
            scorers = {}
            for channels_last in (False, True):
                inputs.channels_last = channels_last
                scorers[channels_last] = inputs.build("cpu")
        rates = np.full(len(cost.names), 0.5)
        energies = {}

        def score(channels_last):
            energies[channels_last] = scorers[channels_last].energy(rates)

        ms = interleaved_medians({"nchw": lambda: score(False), "channels_last": lambda: score(True)}, args.repeats)
        row = {"model": name, "threads": args.threads, "nchw_ms": ms["nchw"], "channels_last_ms": ms["channels_last"],
               "speedup": ms["nchw"] / ms["channels_last"], "round_chooses_channels_last": chosen,
               "energy_nchw": energies[False], "energy_channels_last": energies[True]}
        rows.append(row)
        print(f"{name}: NCHW {row['nchw_ms']:.0f} ms, channels-last {row['channels_last_ms']:.0f} ms "
              f"({row['speedup']:.2f}x); the round chooses {'channels-last' if chosen else 'NCHW'}", flush=True)
    print(table(["model", "threads", "NCHW ms", "channels-last ms", "speed-up", "candidates train", "energies"],
                [[r["model"], r["threads"], f"{r['nchw_ms']:.0f}", f"{r['channels_last_ms']:.0f}", f"{r['speedup']:.2f}x",
                  "channels-last" if r["round_chooses_channels_last"] else "NCHW",
                  f"{r['energy_nchw']:.0f} / {r['energy_channels_last']:.0f}"] for r in rows], {1, 2, 3, 4}))
    path = record.write("search_layout", "one search candidate's energy (cut, BatchNorm re-estimation, 20 fine-tune "
                        "steps, validation) in NCHW against channels-last memory, interleaved medians", rows,
                        {"threads": args.threads, "repeats": args.repeats, "weights": "random (models/)",
                         "finetune_steps": config.finetune_steps, "eval_images": config.eval_images,
                         "train_images": 2000, "rates": 0.5}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
