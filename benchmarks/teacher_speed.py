"""How fast does the distillation teacher run on the CPU: the onnx2torch module or onnxruntime?

The teacher runs forward on every training batch (and every validation and search candidate), so
on a CPU its cost is a large share of an epoch of the pruned model. For each model of models/ (random
weights: speed does not depend on them), the same ONNX graph is run at the training batch by the
torch module acc trains from (no_grad) and by acc.prune.teacher's onnxruntime teacher, interleaved
(torch, onnxruntime, torch, ...), at 1 thread and at every core; medians and the ratio.

    python benchmarks/teacher_speed.py
    python benchmarks/teacher_speed.py --models resnet20,vgg16 --batch 256 --repeats 20
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402
from timing import interleaved_medians, random_graphs  # noqa: E402


def main() -> None:
    import torch

    from acc.format import table
    from acc.prune.bridge import TorchModel
    from acc.prune.teacher import OnnxRuntimeTeacher, teacher_for

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,resnet56,vgg16,mobilenetv2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    rows = []
    for name, graph in random_graphs(args.models.split(",")):
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            module = TorchModel(graph).module
            teacher = teacher_for(graph, module, "cpu")
            assert isinstance(teacher, OnnxRuntimeTeacher)
            x = torch.randn(args.batch, 3, 32, 32)

            def run_torch():
                with torch.no_grad():
                    module(x)

            teacher(x)  # its first batch is its check against the torch module
            assert teacher.checked and not teacher.fallback
            ms = interleaved_medians({"torch": run_torch, "onnxruntime": lambda: teacher(x)}, args.repeats)
            row = {"model": name, "threads": threads, "batch": args.batch,
                   "torch_ms": ms["torch"], "onnxruntime_ms": ms["onnxruntime"]}
            row["speedup"] = row["torch_ms"] / row["onnxruntime_ms"]
            rows.append(row)
            print(f"{name} {threads} thread(s): torch {row['torch_ms']:.1f} ms, onnxruntime "
                  f"{row['onnxruntime_ms']:.1f} ms ({row['speedup']:.2f}x)", flush=True)
    print(table(["model", "threads", "batch", "torch ms", "onnxruntime ms", "speed-up"],
                [[r["model"], r["threads"], r["batch"], f"{r['torch_ms']:.1f}", f"{r['onnxruntime_ms']:.1f}",
                  f"{r['speedup']:.2f}x"] for r in rows], {1, 2, 3, 4, 5}))
    path = record.write("teacher_speed", "the distillation teacher's forward pass: onnx2torch module vs onnxruntime, "
                        "same graph, same batch, interleaved medians", rows,
                        {"batch": args.batch, "repeats": args.repeats, "weights": "random (models/)"}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
