"""What share of `acc compile`'s wall time does the search take, before and after issue 11's cuts,
and does the cheaper search cost accuracy? (issue 11, item 5)

ResNet-20 at 2x fewer parameters, `acc compile` twice per seed, interleaved:
  before: the search as it was: uniform start only, every fine-tune batch and teacher output drawn
          afresh per candidate, no cap on its share (search_share=0);
  after:  the defaults: the best of uniform / global L1 / global BN-scale starts, batches and
          teacher outputs replayed, the search fitted to a quarter of each round (fit_budget).
Settings: --setting demo is `acc demo`'s (models/data/cifar10_demo, 2 rounds x 4 epochs, 6 search
steps of 30 fine-tune steps, 256 validation images, distillation); --setting cifar10 is
benchmarks/compile_cifar10.py's defaults (4,000 CIFAR-10 images, 2,000 test, 2 rounds x 4 epochs,
8 search steps of 50 fine-tune steps, 256 validation images, labels). Reported per run: the search's
seconds (setup included) and share of the run, per round, and test accuracy.

    python benchmarks/search_cost.py --setting demo --seeds 0,1
    python benchmarks/search_cost.py --setting cifar10 --seeds 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

from acc.autocompress import CompileOptions, compile_model  # noqa: E402
from acc.format import table  # noqa: E402
from acc.prune import search  # noqa: E402
from acc.prune.search import SearchConfig  # noqa: E402

QUESTION = "What share of acc compile's wall time is the search, before and after the cuts, and at what accuracy?"
MODEL = ROOT / "models" / "resnet20.onnx"
SETTINGS = {
    "demo": {"data": str(ROOT / "models" / "data" / "cifar10_demo"), "rounds": 2, "budget_epochs": 4, "search_steps": 6,
             "search_finetune_steps": 30, "eval_images": 256, "labels": False, "limit": None, "test_limit": None},
    "cifar10": {"data": str(ROOT.parent / "shared" / "datasets" / "cifar10"), "rounds": 2, "budget_epochs": 4,
                "search_steps": 8, "search_finetune_steps": 50, "eval_images": 256, "labels": None, "limit": 4000,
                "test_limit": 2000},
}
REPLAY_BYTES = search.REPLAY_BYTES


def run(setting: dict, variant: str, seed: int, work: Path) -> dict:
    import math

    config = SearchConfig(eval_images=setting["eval_images"], finetune_steps=setting["search_finetune_steps"])
    config.cooling = math.exp(math.log(config.t_end / config.t_start) / setting["search_steps"])
    if variant == "before":
        config.starts, config.search_share = ("uniform",), 0.0
    search.REPLAY_BYTES = 0 if variant == "before" else REPLAY_BYTES
    options = CompileOptions(rate=2.0, rounds=setting["rounds"], budget_epochs=setting["budget_epochs"],
                             labels=setting["labels"], seed=seed, progress=False, search=config, limit=setting["limit"],
                             test_limit=setting["test_limit"])
    started = time.time()
    report = compile_model(MODEL, setting["data"], work / f"{variant}_{seed}", options, log=lambda *a: None).report
    cost = report["search_cost"]
    return {"variant": variant, "seed": seed, "test_accuracy": report["accuracy_after"]["test"]["accuracy"],
            "params_reduction": report["params"]["reduction_dense"], "run_seconds": cost["run_seconds"],
            "search_seconds": cost["seconds"], "setup_seconds": cost["setup_seconds"], "share": cost["share"],
            "per_round": cost["per_round"], "starts": [s.get("start") for s in report["search"]],
            "budget": [s.get("budget") for s in report["search"]], "evaluated": [s.get("evaluated") for s in report["search"]],
            "seconds": time.time() - started}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=QUESTION)
    p.add_argument("--setting", choices=sorted(SETTINGS), default="demo")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--variants", default="before,after")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    setting = SETTINGS[args.setting]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for variant in variants:
                rows.append(run(setting, variant, seed, Path(tmp)))
                r = rows[-1]
                print(f"{variant} seed {seed}: {100 * r['test_accuracy']:.2f} %, search {r['search_seconds']:.0f} s of "
                      f"{r['run_seconds']:.0f} s ({100 * r['share']:.0f} %)", flush=True)
    print(table(["variant", "seed", "test acc %", "params", "search s", "run s", "search share", "per round"],
                [[r["variant"], r["seed"], f"{100 * r['test_accuracy']:.2f}", f"{r['params_reduction']:.2f}x",
                  f"{r['search_seconds']:.0f}", f"{r['run_seconds']:.0f}", f"{100 * r['share']:.0f} %",
                  ", ".join(f"{100 * x['share']:.0f} %" for x in r["per_round"])] for r in rows], {1, 2, 3, 4, 5, 6}))
    summary = {}
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        accs, shares = [100 * r["test_accuracy"] for r in mine], [r["share"] for r in mine]
        summary[variant] = {"accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                            "share_mean": statistics.mean(shares)}
        print(f"{variant}: {summary[variant]['accuracy_mean']:.2f} ± {summary[variant]['accuracy_std']:.2f} %, "
              f"search {100 * summary[variant]['share_mean']:.0f} % of the run (mean over {len(mine)} seeds)")
    path = record.write(f"search_cost_{args.setting}", QUESTION, rows, {**setting, "rate": "2x", "seeds": seeds}, args.out,
                        summary=summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
