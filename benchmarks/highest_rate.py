"""The highest rate acc compile reaches within 2 points of test accuracy, on the whole training set.

Each spec RATE:ROUNDS:EPOCHS is one `acc compile` of the shipped ResNet-20 (the search, default
options, all 45,000 training images, all 10,000 test images) to RATE in ROUNDS rounds of EPOCHS
training epochs each. A compile takes 25 minutes or more on 2 CPU cores, so finished runs are kept
in benchmarks/.work/highest_rate/ and reused when their report's options match the spec.

    python benchmarks/highest_rate.py --specs 1.5:1:8,2:2:8        # 2 CPU cores, about an hour
    python benchmarks/highest_rate.py --specs 4:3:20,8:3:20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

from acc import api  # noqa: E402
from acc.format import table  # noqa: E402

MAX_DROP_POINTS = 2.0


def parse_spec(text: str) -> tuple[float, int, int]:
    rate, rounds, epochs = text.split(":")
    return float(rate.rstrip("x")), int(rounds), int(epochs)


def cached_report(out: Path, rate: float, rounds: int, epochs: int, device: str) -> dict | None:
    path = out / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    o = report["options"]
    same = (o["rate"] == rate and o["rounds"] == rounds and o["budget_epochs"] == epochs and o["limit"] is None
            and o["test_limit"] is None and o["metric"] == "params" and o["strategy"] == "anneal" and o["device"] == device)
    return report if same else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "resnet20.onnx"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--specs", default="1.5:1:8,2:2:8", help="RATE:ROUNDS:EPOCHS_PER_ROUND, comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    work = ROOT / "benchmarks" / ".work" / "highest_rate"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for rate, rounds, epochs in map(parse_spec, args.specs.split(",")):
        out = work / (f"{rate:g}x_r{rounds}_e{epochs}" + ("" if args.device == "cpu" else f"_{args.device}"))
        report = cached_report(out, rate, rounds, epochs, args.device)
        reused = report is not None
        if report is None:
            started = time.time()
            report = api.compile(args.model, f"{rate}x", args.data, out, rounds=rounds, budget_epochs=epochs,
                                 device=args.device, batch_size=256 if args.device == "cuda" else 128).report
            report["seconds"] = time.time() - started
        before = report["accuracy_before"]["test"]["accuracy"]
        after = report["accuracy_after"]["test"]["accuracy"]
        rows.append({"rate": rate, "rounds": rounds, "epochs_per_round": epochs, "accuracy_before": before,
                     "accuracy_after": after, "drop_points": 100 * (before - after),
                     "params_reduction": report["params"]["reduction_dense"], "flops_reduction": report["flops"]["reduction"],
                     "per_round_test_accuracy": [r["accuracy_after"]["test"]["accuracy"] for r in report["per_round"]],
                     "search_kept_best": [(s.get("confirmation") or {}).get("kept_best") for s in report["search"]],
                     "seconds": report["seconds"], "reused_from": str(out.relative_to(ROOT)) if reused else None})
        print(f"{rate:g}x: {100 * after:.2f}% ({rows[-1]['drop_points']:.2f} points)", flush=True)
    within = [r for r in rows if r["drop_points"] <= MAX_DROP_POINTS]
    best = max(within, key=lambda r: r["params_reduction"]) if within else None
    print()
    print(table(["target", "rounds x epochs", "test before", "test after", "drop", "params", "FLOPs", "minutes"],
                [[f"{r['rate']:g}x", f"{r['rounds']} x {r['epochs_per_round']}", f"{100 * r['accuracy_before']:.2f}%",
                  f"{100 * r['accuracy_after']:.2f}%", f"{r['drop_points']:.2f}", f"{r['params_reduction']:.2f}x",
                  f"{r['flops_reduction']:.2f}x", f"{r['seconds'] / 60:.0f}"] for r in rows], {2, 3, 4, 5, 6, 7}))
    print("highest within 2 points: " + (f"{best['params_reduction']:.2f}x" if best else "none"))
    path = record.write("highest_rate" + ("" if args.device == "cpu" else f"_{args.device}"),
                        "the highest parameter reduction acc compile reaches within 2 points of test accuracy, "
                        "ResNet-20 on the whole CIFAR-10 training set", rows,
                        {"device": args.device, "train_images": 45000, "test_images": 10000, "max_drop_points": MAX_DROP_POINTS},
                        args.out, highest_within=best and best["params_reduction"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
