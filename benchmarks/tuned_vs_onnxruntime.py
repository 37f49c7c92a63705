"""With the default tuning workflow, is a pruned model's TVM build at least as fast as onnxruntime?

The workflow: tune the ORIGINAL model once with MetaSchedule at a small trial budget (`--trials`
per task) into a database, then build each pruned version with no trials, its tasks seeded from
the database's schedules at other widths (acc.backends.tune_transfer, active in
acc.backends.tune.tune whenever a database is given).

ResNet-20, VGG-16, ResNet-18 and MobileNetV2 (CIFAR, batch 1, random weights: latency does not
depend on them), cheapest first, each shrunk by a uniform `acc.api.shrink(ratio=R, round_to=8)` to
2x and 4x fewer FLOPs (R bisected on the counted FLOPs, benchmarks/latency.py's uniform_ratio).
For each model: `compile.build(original, tune_trials=T, tune_db=DB)`; then for the original and
each shrunk model `compile.build(onnx, tune_trials=0, tune_db=DB)` (its tuning summary: tasks
reused from the database, transferred from other widths, given acc's default schedule) and `bench.bench(lib,
repeat=15)`, which checks TVM's outputs against onnxruntime's and times onnxruntime and TVM, each
in a process of its own, with their default thread counts. Ratio: onnxruntime ms / TVM ms
(>= 1: TVM at least as fast).

The database (benchmarks/.work/tuned_vs_ort/db) is kept between runs: on a re-run the originals'
tasks are reused, not tuned again, and the shrunk models' transferred records are reused too (the
JSON says whether it held records at the start). The shrunk models are built in order 2x, 4x, so
the 4x model's transfer can pick the 2x model's committed records as its nearest neighbours.

    python benchmarks/tuned_vs_onnxruntime.py [--models a,b] [--trials 8] [--time-limit 2400] [--out DIR]

Writes benchmarks/results/tuned_vs_onnxruntime.json (rewritten after each model).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import record  # noqa: E402
from latency import Run, quiet, uniform_ratio  # noqa: E402

from acc.backends import bench as bench_mod  # noqa: E402
from acc.backends import compile as compile_mod  # noqa: E402

NAME = "tuned_vs_onnxruntime"
MODELS = ["resnet20", "vgg16", "resnet18", "mobilenetv2"]  # cheapest to tune first
TARGETS = [2.0, 4.0]
ROUND_TO = 8
WORK = ROOT / "benchmarks" / ".work" / "tuned_vs_ort"
QUESTION = ("With the default tuning workflow (tune the original once with MetaSchedule at a small trial budget, "
            "then build each pruned version with no trials, its tasks seeded from the original's schedules by "
            "acc's tuning transfer), is the pruned model's TVM build on the host at least as fast as onnxruntime "
            "running the same pruned ONNX? ResNet-20, VGG-16, ResNet-18, MobileNetV2 (CIFAR, batch 1), shrunk "
            "by a uniform ratio with --round-to 8 to 2x and 4x fewer FLOPs.")


def shrink_versions(name: str, folder: Path) -> list[dict]:
    """Export `name` (random weights, BN statistics randomised) and shrink it to each FLOPs target."""
    import torch

    import acc.api
    from acc.passes.analysis import analyze
    from acc.passes.importer import import_model
    from acc.prune.cost import CostModel
    from models.export import build, export_onnx, randomize_batchnorm

    torch.manual_seed(0)
    orig = folder / f"{name}.onnx"
    export_onnx(randomize_batchnorm(build(name)), orig)
    cost = CostModel(analyze(import_model(orig)), round_to=ROUND_TO)
    versions = [{"model": name, "version": "original", "onnx": orig, "ratio": 0.0}]
    for target in TARGETS:
        ratio = uniform_ratio(cost, target)
        shrunk = folder / f"{name}_{target:g}x_r{ROUND_TO}.onnx"
        res = acc.api.shrink(orig, shrunk, ratio=ratio, round_to=ROUND_TO)
        versions.append({"model": name, "version": f"{target:g}x", "onnx": shrunk, "ratio": ratio,
                         "flops_original": res.before.flops, "flops": res.after.flops,
                         "flops_reduction": res.before.flops / res.after.flops})
    versions[0]["flops"] = versions[1]["flops_original"]
    return versions


def measure(row: dict, db: Path, repeat: int) -> None:
    """Build `row`'s ONNX with the database and no trials, then check and time it against onnxruntime."""
    lib, lines = Path(row["onnx"]).with_suffix(".so"), []
    t0 = time.time()
    built = compile_mod.build(row["onnx"], "host", lib, tune_trials=0, tune_db=db, log=lines.append)
    row["build_s"] = round(time.time() - t0, 1)
    t = built.tuning
    row["tuning"] = {k: t.get(k, 0) for k in ("tasks", "reused", "transferred", "tuned", "defaults")}
    row["tuning_log"] = lines
    res = bench_mod.bench(lib, target="host", repeat=repeat, log=quiet)
    m = res.models[0]
    row["tvm"] = {"median_ms": m.tvm.median_ms, "p10_p90_ms": [m.tvm.p10_ms, m.tvm.p90_ms], "rounds": m.tvm.rounds}
    row["onnxruntime"] = {"median_ms": m.onnxruntime.median_ms, "p10_p90_ms": [m.onnxruntime.p10_ms, m.onnxruntime.p90_ms],
                          "rounds": m.onnxruntime.rounds}
    row["ort_over_tvm"] = m.onnxruntime.median_ms / m.tvm.median_ms
    row["max_abs_diff"] = m.max_abs_diff


def table(rows: list[dict], budget: dict) -> str:
    tune_s = ", ".join(f"{k} {v:.0f} s" for k, v in budget.get("tune_original_s", {}).items()) or "none"
    lines = [f"TVM (original tuned with {budget['trials_per_task']} MetaSchedule trials per task; shrunk models "
             f"built with the database and 0 trials) against onnxruntime, host, batch 1, median ms of "
             f"{budget['rounds']} rounds, engine default threads. Tuning the originals: {tune_s}. "
             f"Wall {budget.get('wall_s', 0):.0f} s.", "",
             "| model | version | ratio | FLOPs | tasks: reused / transferred / acc default measured | TVM ms | onnxruntime ms | "
             "onnxruntime / TVM |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r.get("tuning")
        tasks = f"{t['tasks']}: {t['reused']} / {t['transferred']} / {t['defaults']}" if t else "–"
        flops = f"{r['flops'] / 1e6:.1f}M" + (f" ({r['flops_reduction']:.2f}x fewer)" if "flops_reduction" in r else "")
        timed = (f"{r['tvm']['median_ms']:.2f} | {r['onnxruntime']['median_ms']:.2f} | {r['ort_over_tvm']:.2f}"
                 if "tvm" in r else "– | – | –")
        lines.append(f"| {r['model']} | {r['version']} | {r['ratio']:.3f} | {flops} | {tasks} | {timed} |")
    if budget.get("skipped_for_time"):
        lines += ["", f"Skipped for the time limit: {', '.join(budget['skipped_for_time'])}."]
    return "\n".join(lines)


class Record(Run):
    def save(self) -> str:
        self.budget["wall_s"] = round(time.time() - self.started, 1)
        text = table(self.rows, self.budget)
        public = [{k: v for k, v in r.items() if k != "onnx"} for r in self.rows]
        record.write(NAME, QUESTION, public, self.budget, self.out, table=text)
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    ap.add_argument("--trials", type=int, default=8, help="MetaSchedule trials per task for the originals (default 8)")
    ap.add_argument("--repeat", type=int, default=15, help="timing rounds per engine (default 15)")
    ap.add_argument("--time-limit", type=float, default=2400.0, metavar="S",
                    help="start no new model after S seconds (default 2400; the JSON lists what was skipped)")
    ap.add_argument("--out", default=str(record.RESULTS))
    args = ap.parse_args(argv)
    models = [m for m in MODELS if m in args.models.split(",")]
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        ap.error(f"unknown models: {', '.join(sorted(unknown))}")
    db, folder = WORK / "db", WORK / "models"
    folder.mkdir(parents=True, exist_ok=True)
    had_records = any(p.stat().st_size > 0 for p in db.glob("*/database_tuning_record.json"))
    budget = {"mode": "default", "trials_per_task": args.trials, "rounds": args.repeat, "min_repeat_ms_host": 100,
              "round_to": ROUND_TO, "flops_targets": TARGETS, "batch": 1, "input": "1x3x32x32",
              "weights": "random init (torch seed 0), BN statistics randomised (seed 0)",
              "threads": "onnxruntime's default (physical cores); TVM_NUM_THREADS = physical cores, set by acc.backends "
                         "(TVM alone takes half the hardware threads on x86)",
              "timing": "per model, onnxruntime then TVM, each in a process of its own (acc.backends.bench); "
                        "TVM's outputs checked against onnxruntime's before timing",
              "tune_db": str(db), "tune_db_had_records_at_start": had_records,
              "tune_db_note": "kept between runs: tasks with records are reused, not tuned or transferred again",
              "models": models, "load_average_at_start": os.getloadavg()}
    run = Record(budget, args.out, args.time_limit)
    for name in models:
        if run.out_of_time(f"{name} (not started)"):
            continue
        run.log(f"{name}: export and shrink to 2x, 4x fewer FLOPs (round-to {ROUND_TO})")
        versions = shrink_versions(name, folder)
        run.rows += versions
        run.log(f"{name}: tuning the original, {args.trials} trials per task")
        t0, lines = time.time(), []
        built = compile_mod.build(versions[0]["onnx"], "host", folder / f"{name}_tuning.so", tune_trials=args.trials,
                                  tune_db=db, log=lines.append)
        budget.setdefault("tune_original_s", {})[name] = round(time.time() - t0, 1)
        budget.setdefault("tune_original", {})[name] = {**built.tuning, "log": lines}
        run.save()
        for row in versions:
            measure(row, db, args.repeat)
            run.save()
            run.log(f"{name} {row['version']}: tasks {row['tuning']}, TVM {row['tvm']['median_ms']:.2f} ms, "
                    f"onnxruntime {row['onnxruntime']['median_ms']:.2f} ms, ratio {row['ort_over_tvm']:.2f}")
    budget["load_average_at_end"] = os.getloadavg()
    print(run.save())
    return 0


if __name__ == "__main__":
    sys.exit(main())
