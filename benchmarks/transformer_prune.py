"""A Vision Transformer at 2x fewer parameters: acc compile against Torch-Pruning's ViT pruning, same budget.

The CIFAR-10 ViT of models/vit.py (patch 4, depth 6, width 192, 3 heads), trained by
models/train_cifar.py into benchmarks/.work/trained/vit.{onnx,pt} (see the README's benchmark notes):

  acc (search):   `acc compile vit.onnx --rate 2x` (annealing over the MLP widths and whole heads,
                  residual stream kept, cut refitted, fine-tuned with labels + distillation);
  acc (uniform):  the same with uniform rates (no search);
  torch-pruning:  Torch-Pruning 1.6.1's ViT recipe (MetaPruner, global L1 magnitude, whole heads
                  through `num_heads` with `prune_num_heads`, MLP widths; the patch embedding and
                  classifier ignored, so the residual stream is kept as acc keeps it), global ratio
                  bisected to the same parameter target, then fine-tuned by acc's own trainer on the
                  same images for the same epochs at the same learning rate.

Same training images, epochs and test images for every method, 3 seeds; mean and standard deviation
per method, wall time per run. Accuracy on a seeded subset of the test split (nothing is chosen on it).

    nice -n 5 python benchmarks/transformer_prune.py                       # 2x, seeds 0,1,2
    python benchmarks/transformer_prune.py --seeds 0 --train-images 1000   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import record  # noqa: E402
from compile_cifar10 import finetune_torch, onnx_counts, seed_summary, torch_pruning  # noqa: E402

from acc import api  # noqa: E402
from acc.format import table  # noqa: E402
from models.vit import Attention, vit  # noqa: E402

TRAINED = ROOT / "benchmarks" / ".work" / "trained"
QUESTION = ("At 2x fewer parameters and the same training budget, how much of a CIFAR-10 ViT's accuracy does acc "
            "compile keep, against Torch-Pruning's head + MLP pruning and uniform rates?")


def _attention_forward(self, x):
    """models/vit.py's Attention, merging heads to heads x head_dim (not the input width), so it
    still runs after Torch-Pruning removes heads."""
    b, n, _ = x.shape
    q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
    scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
    y = scores.softmax(dim=-1) @ v
    return self.proj(y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def trained_vit(weights: Path) -> torch.nn.Module:
    net = vit()
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    return net.eval()


def tp_pruned(base, ratio: float):
    tp = torch_pruning()
    net = copy.deepcopy(base)
    heads = {lin: block.attn.heads for block in net.blocks for lin in (block.attn.q, block.attn.k, block.attn.v)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cls_token / pos_embed: untouched, the stream is ignored
        pruner = tp.pruner.MetaPruner(net, torch.randn(1, 3, 32, 32), importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, global_pruning=True, ignored_layers=[net.head, net.patch_embed],
                                      num_heads=heads, prune_num_heads=True, prune_head_dims=False,
                                      head_pruning_ratio=ratio)
        pruner.step()
    if any(pruner.num_heads[block.attn.q] == 0 for block in net.blocks):
        return None  # a block left without attention: past any ratio worth taking
    for block in net.blocks:
        block.attn.heads = pruner.num_heads[block.attn.q]
        block.attn.head_dim = block.attn.q.out_features // block.attn.heads
    return net


def run_torch_pruning(model_path, data, target, epochs, limit, test_limit, batch, lr, device, tmp, seed):
    base = trained_vit(Path(model_path).with_suffix(".pt"))
    before = onnx_counts(base, tmp)
    lo, hi = 0.0, 0.95  # bisection on the global ratio for the parameter target
    for _ in range(10):
        mid = (lo + hi) / 2
        net = tp_pruned(base, mid)
        if net is not None and before.params / sum(p.numel() for p in net.parameters()) < target:
            lo = mid
        else:
            hi = mid
    net = tp_pruned(base, hi)
    accuracy = finetune_torch(net, model_path, data, epochs, limit, test_limit, batch, lr, device, seed)
    after = onnx_counts(net.cpu(), tmp)
    return {**accuracy, "params_before": before.params, "params_after": after.params, "flops_before": before.flops,
            "flops_after": after.flops, "global_ratio": hi,
            "heads": [block.attn.heads for block in net.blocks], "mlp": [block.mlp.fc1.out_features for block in net.blocks]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(TRAINED / "vit.onnx"), help="with models/vit.py's state dict beside it (.pt)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--target", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--budget-epochs", type=int, default=2, help="epochs per round")
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="search,uniform,torch-pruning")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--name", default="transformer_prune")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not Path(args.model).is_file() or not Path(args.model).with_suffix(".pt").is_file():
        print(f"{args.model} (and its .pt state dict beside it) not there: train it first with models/train_cifar.py --model vit "
              f"--optimizer adamw --weight-decay 0.05 --out {TRAINED}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    Attention.forward = _attention_forward
    batch, lr = 128, 0.01  # acc's defaults, given to the peer too
    epochs = args.rounds * args.budget_epochs
    work = ROOT / "benchmarks" / ".work" / "transformer_prune"
    work.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    rows = []
    started_all = time.time()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in [m for m in ("search", "uniform") if m in methods]:
            started = time.time()
            result = api.compile(args.model, f"{args.target:g}x", args.data, work / f"{method}_{seed}",
                                 rounds=args.rounds, budget_epochs=args.budget_epochs, limit=args.train_images,
                                 test_limit=args.test_images, device=args.device, batch_size=batch,
                                 strategy="anneal" if method == "search" else "uniform", progress=False, seed=seed,
                                 log=lambda m: None)
            r = result.report
            rows.append({"target": args.target, "seed": seed, "method": f"acc ({method})",
                         "accuracy_before": r["accuracy_before"]["test"]["accuracy"],
                         "accuracy_after": r["accuracy_after"]["test"]["accuracy"],
                         "params_before": r["params"]["before"], "params_after": r["params"]["after_dense"],
                         "flops_before": r["flops"]["before"], "flops_after": r["flops"]["after"],
                         "rates": [x["rates"] for x in r["per_round"]], "seconds": time.time() - started})
            print(f"seed {seed} acc ({method}): {100 * rows[-1]['accuracy_after']:.2f}% "
                  f"({rows[-1]['params_before'] / rows[-1]['params_after']:.2f}x params, {rows[-1]['seconds']:.0f} s)",
                  flush=True)
            record.write(args.name, QUESTION, rows, budget(args, epochs, batch, lr), args.out,
                         seconds=time.time() - started_all)
        if "torch-pruning" in methods:
            started = time.time()
            row = run_torch_pruning(args.model, args.data, args.target, epochs, args.train_images, args.test_images,
                                    batch, lr, args.device, work, seed)
            rows.append({"target": args.target, "seed": seed, "method": "torch-pruning", **row,
                         "seconds": time.time() - started})
            print(f"seed {seed} torch-pruning: {100 * row['accuracy_after']:.2f}% "
                  f"({row['params_before'] / row['params_after']:.2f}x params, heads {row['heads']}, "
                  f"{rows[-1]['seconds']:.0f} s)", flush=True)
            record.write(args.name, QUESTION, rows, budget(args, epochs, batch, lr), args.out,
                         seconds=time.time() - started_all)
    print(table(["seed", "method", "test acc before", "test acc after", "params", "FLOPs", "seconds"],
                [[r["seed"], r["method"], f"{100 * r['accuracy_before']:.2f}%", f"{100 * r['accuracy_after']:.2f}%",
                  f"{r['params_before'] / r['params_after']:.2f}x", f"{r['flops_before'] / r['flops_after']:.2f}x",
                  f"{r['seconds']:.0f}"] for r in rows], {2, 3, 4, 5, 6}))
    summary = seed_summary(rows)
    print(table(["target", "method", "seeds", "test acc (mean +- std)", "seconds (mean)"],
                [[f"{s['target']:g}x", s["method"], s["seeds"], f"{100 * s['mean']:.2f} +- {100 * s['std']:.2f}",
                  f"{s['seconds']:.0f}"] for s in summary], {2, 4}))
    path = record.write(args.name, QUESTION, rows, budget(args, epochs, batch, lr), args.out, summary=summary,
                        seconds=time.time() - started_all)
    print(f"wrote {path}")
    return 0


def budget(args, epochs, batch, lr) -> dict:
    return {"model": Path(args.model).name, "target_params": args.target, "rounds": args.rounds,
            "epochs_per_round": args.budget_epochs, "total_epochs": epochs, "torch_pruning_finetune_epochs": epochs,
            "train_images": args.train_images, "test_images": args.test_images, "batch": batch, "lr": lr,
            "device": args.device, "threads": args.threads, "seeds": args.seeds}


if __name__ == "__main__":
    sys.exit(main())
