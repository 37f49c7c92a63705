"""Can the search's energy be cheaper and still rank candidates as the expensive one does? (issue 11, item 5)

From the shipped ResNet-20 at the first round of a 2x compile (the demo's data and objective), this
draws the candidates a search scores (the starts: uniform rates, global L1, global BN scale, then
guided perturbations of uniform rates rescaled onto the target) and scores each with the reference
energy (SearchConfig's former defaults: 50 fine-tune steps, 512 validation images, 4 BatchNorm
calibration batches), with the reference again on other seeds (how far the energy agrees with
itself: the ceiling for any cheaper variant) and with cheaper variants. Reported: Spearman rank
correlation with the reference, whether the variant picks the reference's best, and seconds per
candidate.

    python benchmarks/scoring_budget.py [--candidates 8] [--variants 30/256/2,20/256/2] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

import record  # noqa: E402
from search_proxy import spearman  # noqa: E402

from acc.autocompress import build_scorer  # noqa: E402
from acc.format import table  # noqa: E402
from acc.passes.analysis import analyze  # noqa: E402
from acc.passes.importer import normalize  # noqa: E402
from acc.passes.load import load_model  # noqa: E402
from acc.prune.admm import TrainConfig  # noqa: E402
from acc.prune.pipeline import PruneOptions  # noqa: E402
from acc.prune.rates import Rates  # noqa: E402
from acc.prune.search import Guidance, SearchConfig, cost_model  # noqa: E402

QUESTION = "Do cheaper search energies (fewer fine-tune steps, validation images, BN batches) rank candidates like the reference?"
REFERENCE = (50, 512, 4)  # fine-tune steps / validation images / BN calibration batches


def draw(guidance: Guidance, goal: float, count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    out = [(kind, r) for kind, r in guidance.starts(goal, "params").items() if r is not None]
    uniform, rng = out[0][1], np.random.default_rng(seed)
    for i in range(count - len(out)):
        sigma = (0.1, 0.2, 0.3)[i % 3]
        noisy = np.clip(uniform + rng.normal(0.0, sigma, size=uniform.shape), 0.0, guidance.config.max_rate)
        out.append((f"guided σ={sigma}", guidance.rescale(noisy, goal, "params")))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=QUESTION)
    p.add_argument("--model", default=str(ROOT / "models" / "resnet20.onnx"))
    p.add_argument("--data", default=str(ROOT / "models" / "data" / "cifar10_demo"))
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--variants", default="30/256/2,20/256/2,10/256/2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    model = normalize(load_model(args.model))
    analysis = analyze(model)
    cost = cost_model(analysis, "params")
    goal = cost.total("params") / args.rate ** (1 / args.rounds)
    guidance = Guidance(analysis, cost, SearchConfig(seed=args.seed))
    cands = draw(guidance, goal, args.candidates, args.seed)
    options = PruneOptions(rates=Rates(), train=TrainConfig(seed=args.seed + 1), labels=False, progress=False)
    variants = [("reference", REFERENCE, 0), ("reference, other seeds", REFERENCE, 1)]
    variants += [(v, tuple(int(x) for x in v.split("/")), 0) for v in args.variants.split(",")]
    energies, seconds = {}, {}
    for name, (steps, images, bn), offset in variants:
        config = replace(SearchConfig(seed=args.seed), finetune_steps=steps, eval_images=images, bn_batches=bn)
        scorer = build_scorer(model, analysis, args.model, args.data, options, config, False, "cpu", cost)
        started = time.time()
        energies[name] = [scorer.energy(r, seed_offset=offset) for _, r in cands]
        seconds[name] = (time.time() - started) / len(cands)
        print(f"{name}: {seconds[name]:.1f} s/candidate; " + " ".join(f"{e:.0f}" for e in energies[name]), flush=True)
    ref = np.array(energies["reference"])
    rows = []
    for name, (steps, images, bn), offset in variants:
        e = np.array(energies[name])
        rows.append({"variant": name, "finetune_steps": steps, "eval_images": images, "bn_batches": bn, "seed_offset": offset,
                     "spearman_vs_reference": spearman(e, ref), "picks_reference_best": int(np.argmin(e)) == int(np.argmin(ref)),
                     "reference_rank_of_pick": int(np.argsort(np.argsort(ref))[int(np.argmin(e))]),
                     "seconds_per_candidate": seconds[name], "energies": e.tolist()})
    print()
    print(table(["variant", "steps", "val images", "BN batches", "Spearman vs reference", "its pick's reference rank",
                 "s / candidate"],
                [[r["variant"], r["finetune_steps"], r["eval_images"], r["bn_batches"], f"{r['spearman_vs_reference']:+.2f}",
                  r["reference_rank_of_pick"], f"{r['seconds_per_candidate']:.1f}"] for r in rows], {1, 2, 3, 4, 5, 6}))
    budget = {"model": "resnet20", "data": "demo (cifar10_demo)", "rate": args.rate, "round": f"1 of {args.rounds}",
              "candidates": [label for label, _ in cands], "objective": "distillation", "seed": args.seed}
    path = record.write("scoring_budget", QUESTION, rows, budget, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
