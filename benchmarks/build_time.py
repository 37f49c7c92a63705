"""How long a TVM build takes, with the constants folded in numpy (acc.backends.const_fold) or by
TVM's FoldConstant alone, side by side in one run.

Every acc build goes through `acc.backends.compile.prepare` (BatchNorm folding, NHWC): a latency
table's layers, the latency goal's timings, tuning, `acc build`, `acc compile --target`. Per model,
the two ways are interleaved `--repeat` times (median seconds): `prepare` alone, then the whole
host build (prepare, schedule, compile, export), and the built libraries' outputs are compared.
Models: the CIFAR-10 definitions in models/ (random weights, BN statistics randomised).

    python benchmarks/build_time.py [--models resnet20,resnet18,vgg16,mobilenetv2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

QUESTION = ("How much of a TVM build is constant folding, and what does folding the constant arithmetic "
            "in numpy save (same outputs)?")
MODELS = ("resnet20", "resnet18", "vgg16", "mobilenetv2")


def export(name: str, folder: Path) -> Path:
    import torch

    from models.export import build, export_onnx, randomize_batchnorm

    torch.manual_seed(0)
    path = folder / f"{name}.onnx"
    export_onnx(randomize_batchnorm(build(name)), path)
    return path


def timed_pair(path: Path, folder: Path) -> dict:
    """prepare and the whole build, with and without the numpy folder; outputs of both libraries."""
    import tvm
    from tvm import relax

    from acc.backends import compile as compile_mod
    from acc.backends import const_fold
    from acc.passes.load import load_model

    model = load_model(path)
    infos = compile_mod.graph_inputs(model, {})
    x = np.random.default_rng(0).standard_normal(infos[0].shape).astype("float32")
    out = {}
    for way, fold in (("tvm", lambda mod: mod), ("numpy", const_fold.fold_constants)):
        compile_mod.fold_constants = fold
        try:
            started = time.perf_counter()
            compile_mod.prepare(compile_mod.import_onnx(model, infos))
            prepare_s = time.perf_counter() - started
            lib = folder / f"{path.stem}_{way}.so"
            started = time.perf_counter()
            compile_mod.build(path, "host", lib, log=lambda *a, **k: None)
            build_s = time.perf_counter() - started
        finally:
            compile_mod.fold_constants = const_fold.fold_constants
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
        out[way] = {"prepare_s": prepare_s, "build_s": build_s, "y": vm["main"](tvm.runtime.tensor(x)).numpy()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="acc-build-time-") as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            path = export(name, folder)
            runs = [timed_pair(path, folder) for _ in range(args.repeat)]
            row = {"model": name, "repeat": args.repeat,
                   "max_abs_diff": max(float(np.abs(r["tvm"]["y"] - r["numpy"]["y"]).max()) for r in runs)}
            for way in ("tvm", "numpy"):
                for what in ("prepare_s", "build_s"):
                    row[f"{what[:-2]}_{way}_s"] = float(np.median([r[way][what] for r in runs]))
            row["build_speedup"] = row["build_tvm_s"] / row["build_numpy_s"]
            rows.append(row)
            print(f"{name}: prepare {row['prepare_tvm_s']:.2f} -> {row['prepare_numpy_s']:.2f} s, build "
                  f"{row['build_tvm_s']:.2f} -> {row['build_numpy_s']:.2f} s ({row['build_speedup']:.2f}x), "
                  f"outputs differ by {row['max_abs_diff']:.1e}", flush=True)
    header = "| model | prepare, FoldConstant (s) | prepare, numpy first (s) | build before (s) | build now (s) | build speed-up | max abs diff |"
    lines = [header, "|" + "---|" * 7]
    lines += [f"| {r['model']} | {r['prepare_tvm_s']:.2f} | {r['prepare_numpy_s']:.2f} | {r['build_tvm_s']:.2f} | "
              f"{r['build_numpy_s']:.2f} | {r['build_speedup']:.2f}x | {r['max_abs_diff']:.1e} |" for r in rows]
    shown = "\n".join(lines)
    print(shown)
    path = record.write("build_time", QUESTION, rows, {"repeat": args.repeat, "target": "host", "tune_trials": 0},
                        args.out, table=shown)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
