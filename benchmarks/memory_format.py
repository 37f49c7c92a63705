"""Does a training step run faster in channels-last memory on the CPU, per model?

acc.prune.memory_format times this per architecture at run time and trains channels-last where it
is clearly faster. This benchmark shows the ratio the choice rests on: for each model of models/
(random weights), a training step (forward, backward, SGD) of the onnx2torch module acc trains, at
the training batch, in the default (NCHW) and the channels-last layout, interleaved; medians, the
ratio, and what acc would choose.

    python benchmarks/memory_format.py
    python benchmarks/memory_format.py --models resnet20,vgg16 --batch 128 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402
from timing import interleaved_medians, random_graphs  # noqa: E402


def main() -> None:
    import torch
    import torch.nn.functional as F

    from acc.format import table
    from acc.prune.bridge import TorchModel
    from acc.prune.memory_format import as_layout, channels_last_is_faster, to_channels_last

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,resnet56,mobilenetv2,vgg16")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name, graph in random_graphs(args.models.split(",")):
        x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
        nets = {False: TorchModel(graph).module.train(), True: to_channels_last(TorchModel(graph).module.train())}
        optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in nets.items()}

        def step(channels_last):
            loss = F.cross_entropy(nets[channels_last](as_layout(x, channels_last)), y)
            optimizers[channels_last].zero_grad()
            loss.backward()
            optimizers[channels_last].step()

        ms = interleaved_medians({"nchw": lambda: step(False), "channels_last": lambda: step(True)}, args.repeats)
        row = {"model": name, "batch": args.batch, "threads": args.threads,
               "nchw_ms": ms["nchw"], "channels_last_ms": ms["channels_last"],
               "acc_chooses_channels_last": channels_last_is_faster(nets[False], x, "cpu")}
        row["speedup"] = row["nchw_ms"] / row["channels_last_ms"]
        rows.append(row)
        print(f"{name}: NCHW {row['nchw_ms']:.0f} ms, channels-last {row['channels_last_ms']:.0f} ms "
              f"({row['speedup']:.2f}x); acc chooses {'channels-last' if row['acc_chooses_channels_last'] else 'NCHW'}",
              flush=True)
    print(table(["model", "batch", "threads", "NCHW ms", "channels-last ms", "speed-up", "acc trains"],
                [[r["model"], r["batch"], r["threads"], f"{r['nchw_ms']:.0f}", f"{r['channels_last_ms']:.0f}",
                  f"{r['speedup']:.2f}x", "channels-last" if r["acc_chooses_channels_last"] else "NCHW"] for r in rows],
                {1, 2, 3, 4, 5}))
    path = record.write("memory_format", "a CPU training step (forward, backward, SGD) in NCHW against channels-last "
                        "memory, same module, same batch, interleaved medians", rows,
                        {"batch": args.batch, "threads": args.threads, "repeats": args.repeats,
                         "weights": "random (models/)"}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
