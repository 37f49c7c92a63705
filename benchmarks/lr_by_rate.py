"""Which learning rate, and how many rounds, for each compression rate at a short budget?

acc compile of the shipped CIFAR-10 ResNet-20 at each rate, learning rate and number of rounds,
over seeds, with compile_cifar10.py's budget (4,000 training images, 2,000 test images, 8 search
steps, 256 evaluation images): the measurement behind acc.prune.schedule.lr_for_rate, and whether
more rounds pay at high rates (at equal epochs, and at 4 epochs per round). Each run's folder is kept
under benchmarks/.work/lr_by_rate/; a folder that already holds a report.json is read instead of run
again (--rerun runs it anyway), so the grid can grow.

    python benchmarks/lr_by_rate.py --rates 8 --lrs 0.01,0.02,0.04 --seeds 0,1,2
    python benchmarks/lr_by_rate.py --rates 16 --lrs 0.04 --rounds 2,4 --epochs 8   # same epochs in all
    python benchmarks/lr_by_rate.py --existing      # the table of every run folder there
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

from acc import api  # noqa: E402
from acc.format import table  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "lr_by_rate"


def run_folder(rate: float, lr: float, rounds: int, epochs_per_round: int, seed: int) -> Path:
    return WORK / f"{rate:g}x_lr{lr:g}_r{rounds}e{epochs_per_round}_s{seed}"


def row_of(report: dict, rate, lr, rounds, epochs_per_round, seed) -> dict:
    kept_best = sum(1 for detail in report["rounds_detail"] for h in detail.get("history", []) if h.get("phase") == "keep_best")
    return {"rate": rate, "lr": lr, "rounds": rounds, "epochs_per_round": epochs_per_round, "seed": seed,
            "accuracy_before": report["accuracy_before"]["test"]["accuracy"],
            "accuracy_after": report["accuracy_after"]["test"]["accuracy"],
            "params_reduction": report["params"]["before"] / report["params"]["after_dense"],
            "rounds_ending_on_an_earlier_state": kept_best, "seconds": report["seconds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "resnet20.onnx"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--rates", default="2,4,8,16")
    p.add_argument("--lrs", default="0.01,0.02,0.04")
    p.add_argument("--rounds", default="2", help="comma-separated numbers of rounds")
    p.add_argument("--epochs", type=int, default=8, help="training epochs in all, split evenly over the rounds")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--rerun", action="store_true", help="run again where a report is already there")
    p.add_argument("--existing", action="store_true", help="no runs: every run folder already under the work folder")
    p.add_argument("--note", default=None, help="a line on where the runs come from, kept with the budget")
    p.add_argument("--name", default="lr_by_rate")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    rows = []
    if args.existing:
        for folder in sorted(WORK.glob("*/report.json"), key=lambda f: f.parent.name):
            rate, lr, shape, seed = folder.parent.name.split("_")
            rounds, epochs_per_round = (int(x) for x in shape[1:].split("e"))
            rows.append(row_of(json.loads(folder.read_text()), float(rate[:-1]), float(lr[2:]), rounds, epochs_per_round,
                               int(seed[1:])))
        rows.sort(key=lambda r: (r["rate"], r["lr"], r["rounds"], r["seed"]))
    for rate in [] if args.existing else [float(r) for r in args.rates.split(",")]:
        for lr in [float(x) for x in args.lrs.split(",")]:
            for rounds in [int(r) for r in args.rounds.split(",")]:
                epochs_per_round = max(1, args.epochs // rounds)
                for seed in [int(s) for s in args.seeds.split(",")]:
                    folder = run_folder(rate, lr, rounds, epochs_per_round, seed)
                    if args.rerun or not (folder / "report.json").is_file():
                        folder.parent.mkdir(parents=True, exist_ok=True)
                        api.compile(args.model, f"{rate:g}x", args.data, folder, rounds=rounds,
                                    budget_epochs=epochs_per_round, lr=lr, search_steps=8, eval_images=256,
                                    limit=args.train_images, test_limit=args.test_images, device="cpu",
                                    progress=False, seed=seed, log=lambda m: None)
                    report = json.loads((folder / "report.json").read_text())
                    rows.append(row_of(report, rate, lr, rounds, epochs_per_round, seed))
                    r = rows[-1]
                    print(f"{rate:g}x lr {lr:g} {rounds}x{epochs_per_round} seed {seed}: "
                          f"{100 * r['accuracy_after']:.2f}%", flush=True)
    summary = []
    for key in dict.fromkeys((r["rate"], r["lr"], r["rounds"], r["epochs_per_round"]) for r in rows):
        acc = [r["accuracy_after"] for r in rows if (r["rate"], r["lr"], r["rounds"], r["epochs_per_round"]) == key]
        broke = sum(r["rounds_ending_on_an_earlier_state"] for r in rows
                    if (r["rate"], r["lr"], r["rounds"], r["epochs_per_round"]) == key)
        summary.append({"rate": key[0], "lr": key[1], "rounds": key[2], "epochs_per_round": key[3], "seeds": len(acc),
                        "mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                        "rounds_ending_on_an_earlier_state": broke})
    print(table(["rate", "lr", "rounds x epochs", "test acc (mean +- std)", "seeds", "rounds kept an earlier state"],
                [[f"{s['rate']:g}x", f"{s['lr']:g}", f"{s['rounds']}x{s['epochs_per_round']}",
                  f"{100 * s['mean']:.2f} +- {100 * s['std']:.2f}", s["seeds"], s["rounds_ending_on_an_earlier_state"]]
                 for s in summary], {3, 4, 5}))
    path = record.write(args.name, "acc compile's learning rate and rounds against the rate, ResNet-20 CIFAR-10, short budget",
                        rows, {"train_images": args.train_images, "test_images": args.test_images, "epochs": args.epochs,
                               "search_steps_per_round": 8, "eval_images": 256, "batch": 128, "device": "cpu",
                               **({"note": args.note} if args.note else {})},
                        args.out, summary=summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
