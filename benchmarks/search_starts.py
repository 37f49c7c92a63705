"""Does the search's energy pick the start allocation that trains best?

The search scores its start allocations (uniform rates, the peers' global L1 and BatchNorm-scale
allocations) with its energy and anneals from the lowest; at a short budget the fitted search has
room for about one move, so that choice is most of the search. Two parts, same data and budget as
compile_cifar10.py (4,000 training images, 2 rounds x 4 epochs):
  trained:  acc compile with one start only (--search-starts X, the search otherwise as compiled),
            per seed: its test accuracy, and the round-1 start energy the search saw;
  energies: the round-1 starts scored again with 0..K fine-tune steps, each over 3 seed offsets
            (the spread of one candidate's energy against the differences between starts).

    python benchmarks/search_starts.py                      # 2 CPU cores: ~25 min
    python benchmarks/search_starts.py --part energies --finetune-steps 0,20,100,300
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

from acc import api  # noqa: E402
from acc.format import table  # noqa: E402

STARTS = ("uniform", "l1", "bn")
# compile_cifar10.py's CPU budget: what every trained run gets, and what the JSON records.
BUDGET = {"rounds": 2, "budget_epochs": 4, "search_steps": 8, "eval_images": 256, "limit": 4000, "test_limit": 2000,
          "batch_size": 128}


def trained(args, work: Path) -> list[dict]:
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for start in args.starts.split(","):
            started = time.time()
            r = api.compile(args.model, args.rate, args.data, work / f"{start}_{seed}", **BUDGET, metric=args.metric,
                            progress=False, seed=seed, log=lambda m: None, search_starts=(start,))
            rep = r.report
            rows.append({"part": "trained", "start": start, "seed": seed,
                         "test_accuracy": rep["accuracy_after"]["test"]["accuracy"],
                         "flops_reduction": rep["flops"]["before"] / rep["flops"]["after"],
                         "params_reduction": rep["params"]["before"] / rep["params"]["after_dense"],
                         "round1_start_energy": rep["search"][0]["start"]["energies"][start],
                         "search_finetune_steps": rep["search"][0]["config"]["finetune_steps"],
                         "seconds": time.time() - started})
            print(f"{start} seed {seed}: {100 * rows[-1]['test_accuracy']:.2f}% "
                  f"(round-1 energy {rows[-1]['round1_start_energy']:.0f})", flush=True)
    return rows


def energies(args) -> list[dict]:
    """The round-1 starts (one 2-round step: the square root of the rate) under each fine-tune length."""
    from acc.autocompress import build_scorer, parse_rate
    from acc.passes.analysis import analyze
    from acc.passes.importer import normalize
    from acc.passes.load import load_model
    from acc.prune.admm import TrainConfig
    from acc.prune.cost import CostModel
    from acc.prune.pipeline import PruneOptions
    from acc.prune.rates import Rates
    from acc.prune.search import Guidance, SearchConfig

    model = normalize(load_model(args.model))
    analysis = analyze(model)
    cost = CostModel(analysis)
    cfg = SearchConfig(eval_images=BUDGET["eval_images"], seed=0)
    step_rate = parse_rate(args.rate) ** (1 / BUDGET["rounds"])
    starts = Guidance(analysis, cost, cfg).starts(cost.total(args.metric) / step_rate, args.metric)
    rows = []
    for steps in [int(s) for s in args.finetune_steps.split(",")]:
        options = PruneOptions(rates=Rates(), train=TrainConfig(seed=0), limit=BUDGET["limit"], progress=False)
        scorer = build_scorer(model, analysis, args.model, args.data, options, replace(cfg, finetune_steps=steps), None, "cpu")
        for offset in range(3):
            for start in args.starts.split(","):
                if starts.get(start) is None:
                    continue
                started = time.time()
                rows.append({"part": "energies", "start": start, "finetune_steps": steps, "seed_offset": offset,
                             "energy": scorer.energy(starts[start], seed_offset=offset), "seconds": time.time() - started})
            print(f"{steps} steps, offset {offset}: " + ", ".join(
                f"{r['start']} {r['energy']:.0f}" for r in rows[-len(starts):]), flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample std: test accuracy per start, energy per start and fine-tune length."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["part"], r["start"], r.get("finetune_steps"))
        groups.setdefault(key, []).append(r["test_accuracy"] if r["part"] == "trained" else r["energy"])
    return [{"part": part, "start": start, "finetune_steps": steps, "n": len(v), "mean": statistics.mean(v),
             "std": statistics.stdev(v) if len(v) > 1 else 0.0} for (part, start, steps), v in groups.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "resnet20.onnx"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--rate", default="4x")
    p.add_argument("--metric", default="flops", choices=["params", "flops"])
    p.add_argument("--starts", default=",".join(STARTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--finetune-steps", default="0,20,100")
    p.add_argument("--part", default="trained,energies")
    p.add_argument("--name", default="search_starts")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    work = ROOT / "benchmarks" / ".work" / args.name
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if "trained" in args.part:
        rows += trained(args, work)
    if "energies" in args.part:
        rows += energies(args)
    summary = summarise(rows)
    print(table(["part", "start", "fine-tune steps", "n", "mean", "std"],
                [[s["part"], s["start"], "" if s["finetune_steps"] is None else s["finetune_steps"], s["n"],
                  f"{100 * s['mean']:.2f}%" if s["part"] == "trained" else f"{s['mean']:.0f}",
                  f"{100 * s['std']:.2f}" if s["part"] == "trained" else f"{s['std']:.0f}"] for s in summary], {3, 4, 5}))
    budget = {"model": Path(args.model).stem, "rate": args.rate, "metric": args.metric, **BUDGET, "seeds": args.seeds}
    path = record.write(args.name, "Does the search's energy pick the start allocation that trains best?", rows, budget,
                        args.out, summary=summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
