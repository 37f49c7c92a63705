"""Does the post-training recovery help as the first step after a training run's hard prune
(issue 15, item 2)?

`acc prune --recover-cut N` refits, right after the hard prune, every layer that reads removed
channels (least squares against the model just before the cut, on N training images) and
re-estimates BatchNorm, then fine-tunes as usual. Three variants of the same prune: plain (the cut
as it is), refit (recovery, the norms choose the channels: the default), refit+rank (recovery, the
channels chosen by the refit's residual, acc.prune.posttrain.selection, as `acc shrink --rate`
does; API cut_ranking=True). At
short budgets, one-shot (what `--admm auto` picks below 10 epochs): uniform filter rates that reach
2x and 4x fewer parameters, 1 and 3 fine-tuning epochs on a seeded subset of the CIFAR-10 training
split, seeds 0-2; accuracy on a fixed subset of the test split, mean and standard deviation.
Also recorded: the validation accuracy right after the cut and right after the recovery.

    nice -n 5 python benchmarks/cut_recovery.py [--models resnet20] [--reductions 2,4] [--epochs 1,3]
                                                [--images 5000] [--test-images 2000] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from acc import api  # noqa: E402
from acc.format import table  # noqa: E402
from benchmarks import record  # noqa: E402

DATA = Path("/work/shared/datasets/cifar10")
MODELS = {"resnet20": ROOT / "models" / "resnet20.onnx",
          "vgg16": ROOT / "benchmarks" / ".work" / "trained" / "vgg16.onnx",
          "mobilenetv2": ROOT / "benchmarks" / ".work" / "trained" / "mobilenetv2.onnx"}
QUESTION = ("At short fine-tuning budgets, is a one-shot prune more accurate when the post-training recovery "
            "(least-squares refit of the cut layers, BatchNorm re-estimation) runs right after the cut?")


def uniform_for(model: Path, reduction: float) -> float:
    from acc.passes.analysis import analyze
    from acc.passes.importer import import_model
    from acc.prune.search import Guidance, SearchConfig, cost_model

    analysis = analyze(import_model(str(model)))
    cost = cost_model(analysis, "params")
    return Guidance(analysis, cost, SearchConfig()).uniform_rate(cost.total("params") / reduction, "params")


VARIANTS = {"plain": (0, False), "refit": (512, False), "refit+rank": (512, True)}  # recover_cut, cut_ranking


def one_run(model: Path, rate: float, epochs: int, seed: int, variant: str, args) -> dict:
    recover, ranking = VARIANTS[variant]
    recover = recover and args.recover_images
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        result = api.prune(str(model), str(DATA), str(Path(tmp) / "out.onnx"), uniform=rate, admm="off",
                           finetune_epochs=epochs, limit=args.images, test_limit=args.test_images, seed=seed,
                           progress=False, recover_cut=recover, cut_ranking=ranking, log=lambda *a, **k: None)
        seconds = time.time() - started
    report = result.report
    cut = next(h for h in report["history"] if h.get("phase") == "hard_prune")
    return {"accuracy": report["accuracy_after"]["test"]["accuracy"], "accuracy_before": report["accuracy_before"]["test"]["accuracy"],
            "val_accuracy_cut": cut.get("val_accuracy_after"), "val_accuracy_recovered": cut.get("val_accuracy_recovered"),
            "recovery": cut.get("recovery"), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--reductions", default="2,4")
    parser.add_argument("--epochs", default="1,3")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recover-images", type=int, default=512)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="plain: the cut as it is; refit: + recovery; refit+rank: + channels chosen by the refit's residual")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--resume", action="store_true", help="keep the rows of the last run's JSON, run the missing ones")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    name_out = args.out or "cut_recovery"
    last = record.RESULTS / f"{name_out}.json" if not Path(name_out).is_absolute() else Path(name_out + ".json")
    earlier = {}
    if args.resume and last.is_file():
        earlier = {(r["model"], r["reduction"], r["epochs"], r["seed"], r["variant"]): r
                   for r in json.loads(last.read_text())["rows"]}
    rows = []
    for name in args.models.split(","):
        model = MODELS[name]
        if not model.is_file():
            print(f"{name}: {model} not there, skipped")
            continue
        for reduction in (float(r) for r in args.reductions.split(",")):
            rate = uniform_for(model, reduction)
            for epochs in (int(e) for e in args.epochs.split(",")):
                for seed in (int(s) for s in args.seeds.split(",")):
                    for variant in variants:  # interleaved: the machine's load hits them alike
                        if (name, reduction, epochs, seed, variant) in earlier:
                            rows.append(earlier[(name, reduction, epochs, seed, variant)])
                            continue
                        run = one_run(model, rate, epochs, seed, variant, args)
                        rows.append({"model": name, "reduction": reduction, "uniform_rate": rate, "epochs": epochs,
                                     "seed": seed, "variant": variant, **run})
                        print(f"{name} {reduction:g}x {epochs} ep seed {seed} {variant}: "
                              f"{run['accuracy']:.4f} (cut {run['val_accuracy_cut']}, recovered "
                              f"{run['val_accuracy_recovered']}) {run['seconds']:.0f} s", flush=True)
    summary = write(name_out, rows, args, variants)
    print(table(["model", "params", "epochs", *variants],
                [[s["model"], f"{s['reduction']:g}x", s["epochs"],
                  *(f"{100 * s[v]['mean']:.2f} +- {100 * s[v]['std']:.2f}" if v in s else "" for v in variants)]
                 for s in summary]))
    print(f"wrote {name_out}")


def write(name_out: str, rows: list[dict], args, variants: list[str]) -> list[dict]:
    summary = []
    keys = sorted({(r["model"], r["reduction"], r["epochs"]) for r in rows})
    for model, reduction, epochs in keys:
        row = {"model": model, "reduction": reduction, "epochs": epochs}
        for variant in variants:
            acc = [r["accuracy"] for r in rows if (r["model"], r["reduction"], r["epochs"], r["variant"]) ==
                   (model, reduction, epochs, variant)]
            if acc:
                row[variant] = {"mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                                "seeds": len(acc)}
        summary.append(row)
    budget = {"images": args.images, "test_images": args.test_images, "seeds": args.seeds, "admm": "off",
              "variants": variants,
              "recover_images": args.recover_images, "threads": args.threads}
    record.write(name_out, QUESTION, rows, budget, summary=summary)
    return summary


if __name__ == "__main__":
    main()
