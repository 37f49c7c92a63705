"""Under a FLOPs target, should the experience rule sort groups by the FLOPs they hold or by their
parameters? (issue 11, item 6)

`acc compile` of the shipped ResNet-20 at 2x fewer FLOPs on the demo data, at the demo's budget
(2 rounds x 4 epochs, 6 search steps of 30 fine-tune steps, 256 validation images, distillation),
once with the groups ordered by parameters (the default) and once by FLOPs (SearchConfig.order_by),
same seeds, runs interleaved. Reported: test accuracy, FLOPs and parameter reductions, wall time.

    python benchmarks/allocation_order.py [--seeds 0,1,2] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

from acc.autocompress import CompileOptions, compile_model  # noqa: E402
from acc.format import table  # noqa: E402
from acc.prune.search import SearchConfig  # noqa: E402

QUESTION = "At 2x fewer FLOPs, does ordering the search's rates by FLOPs (not parameters) give a more accurate model?"
MODEL = ROOT / "models" / "resnet20.onnx"
DATA = ROOT / "models" / "data" / "cifar10_demo"
BUDGET = {"rate": "2x", "metric": "flops", "rounds": 2, "budget_epochs": 4, "search_steps": 6, "search_finetune_steps": 30,
          "eval_images": 256, "labels": False}


def run(order_by: str, seed: int, work: Path) -> dict:
    import math

    search = SearchConfig(eval_images=BUDGET["eval_images"], finetune_steps=BUDGET["search_finetune_steps"], order_by=order_by)
    search = replace(search, cooling=math.exp(math.log(search.t_end / search.t_start) / BUDGET["search_steps"]))
    options = CompileOptions(rate=2.0, metric="flops", rounds=BUDGET["rounds"], budget_epochs=BUDGET["budget_epochs"],
                             labels=False, seed=seed, progress=False, search=search)
    started = time.time()
    report = compile_model(MODEL, DATA, work / f"{order_by}_{seed}", options, log=lambda *a: None).report
    return {"order_by": order_by, "seed": seed, "test_accuracy": report["accuracy_after"]["test"]["accuracy"],
            "flops_reduction": report["flops"]["reduction"], "params_reduction": report["params"]["reduction_dense"],
            "seconds": time.time() - started}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=QUESTION)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for order_by in ("params", "flops"):
                rows.append(run(order_by, seed, Path(tmp)))
                r = rows[-1]
                print(f"{order_by} seed {seed}: {100 * r['test_accuracy']:.2f} % at {r['flops_reduction']:.2f}x FLOPs, {r['seconds']:.0f} s", flush=True)
    summary = {}
    for order_by in ("params", "flops"):
        acc = [100 * r["test_accuracy"] for r in rows if r["order_by"] == order_by]
        summary[order_by] = {"mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0}
    print(table(["order by", "seed", "test acc %", "FLOPs", "params", "s"],
                [[r["order_by"], r["seed"], f"{100 * r['test_accuracy']:.2f}", f"{r['flops_reduction']:.2f}x",
                  f"{r['params_reduction']:.2f}x", f"{r['seconds']:.0f}"] for r in rows], {1, 2, 3, 4, 5}))
    for k, v in summary.items():
        print(f"{k}: {v['mean']:.2f} ± {v['std']:.2f} % (mean ± std over {len(seeds)} seeds)")
    path = record.write("allocation_order", QUESTION, rows, {**BUDGET, "seeds": seeds}, args.out, summary=summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
