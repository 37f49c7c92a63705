"""Does the search beat uniform rates, and Torch-Pruning, at the same budget?

The shipped CIFAR-10 ResNet-20 (or another CIFAR model of models/: --model its ONNX export, e.g. one
models/train_cifar.py trained) compiled to each target three ways, with the same data and epochs:
  search:   acc compile (simulated annealing + guidance, then ADMM, purification, fine-tuning);
  uniform:  acc compile with one rate for every group (same rounds, same ADMM budget);
  torch-pruning: Torch-Pruning's global magnitude (L1) pruning of the torch model with the same
            trained weights to the same parameter count, then the same number of fine-tuning epochs.
Accuracy on the CIFAR-10 test split, which nothing is chosen on. Torch-Pruning is installed into
benchmarks/.deps (--no-deps), never as a dependency of acc.

With --metric flops the target counts FLOPs (acc's count, the same for every method): acc
compiles with --metric flops, and Torch-Pruning's global (and, with the method "torch-pruning-uniform",
its per-layer uniform) ratio is bisected until its model has the same FLOPs reduction.

With --metric nonzero the target counts non-zero parameters (the paper's count): the search then
chooses filter and column rates per layer, uniform rates put one rate on every group and every
layer's columns (mixed), and a fourth row, "search (filter only)", is the dense-parameter search at
the same rate, so the table shows what the column scheme adds at an equal non-zero count.

    python benchmarks/compile_cifar10.py            # 2 CPU cores
    python benchmarks/compile_cifar10.py --full     # whole training set, longer budget (GPU)
    python benchmarks/compile_cifar10.py --metric nonzero --targets 8,30
    python benchmarks/compile_cifar10.py --metric flops --targets 2,4 --seeds 0,1,2 \
        --methods search,uniform,torch-pruning,torch-pruning-uniform
    python benchmarks/compile_cifar10.py --model benchmarks/.work/trained/mobilenetv2.onnx --targets 4,8 --seeds 0,1,2
    python benchmarks/compile_cifar10.py --methods search,torch-pruning --seeds 0,1,2 --peer-epochs 8,20
                                                    # the peer also at more epochs: accuracy at equal wall time
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPS = Path(__file__).resolve().parent / ".deps"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402

from acc import api  # noqa: E402
from acc.format import table  # noqa: E402
from acc.passes.counting import count  # noqa: E402
from acc.passes.importer import import_model  # noqa: E402


def torch_pruning():
    if not (DEPS / "torch_pruning").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(DEPS),
                        "torch-pruning==1.6.1"], check=True)
    sys.path.insert(0, str(DEPS))
    import torch_pruning as tp

    return tp


def torch_model(name: str, path):
    """models/ `name` with the weights of the ONNX at `path` (initializer names are state-dict keys)."""
    import numpy as np
    import torch
    from onnx import numpy_helper

    from models.export import build

    # The import turns Constant nodes (an exporter's way of storing some weights) into initializers.
    values = {t.name: torch.from_numpy(np.array(numpy_helper.to_array(t))) for t in import_model(path).graph.initializer}
    net = build(name)
    state = net.state_dict()
    missing = [k for k, v in state.items() if k not in values and v.is_floating_point()]
    if missing:
        raise RuntimeError(f"{path}: no initializer for {missing[:3]}: cannot load the torch model")
    net.load_state_dict({k: values.get(k, v).reshape(v.shape) for k, v in state.items()})
    return net.eval()


def onnx_counts(net, tmp: Path):
    import torch

    path = tmp / "tp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(1, 3, 32, 32),), str(path), input_names=["input"],
                          output_names=["logits"], opset_version=17, do_constant_folding=False, dynamo=False)
    return count(import_model(path))


def finetune_torch(net, model_path, data, epochs, limit, test_limit, batch, lr, device, seed=0) -> dict:
    """Fine-tune a peer's torch model with acc's own trainer and data (same images, epochs, learning
    rate and test split as acc gets); test accuracy of the original ONNX and of `net` after."""
    import torch

    from acc.prune.admm import TrainConfig, Trainer
    from acc.prune.bridge import TorchModel
    from acc.prune.constraints import ConstraintSet
    from acc.prune.objective import Objective, evaluate
    from acc.prune.pipeline import PruneOptions, load_training_data
    from acc.prune.rates import Rates

    torch.manual_seed(seed)
    options = PruneOptions(rates=Rates(), train=TrainConfig(seed=seed), limit=limit, test_limit=test_limit)
    train, val, test, _ = load_training_data(data, model_path, options, (1, 3, 32, 32))
    dev = torch.device(device)
    net.to(dev)
    train, val, test = train.to(dev), val.to(dev), test.to(dev)
    objective = Objective()
    original = TorchModel(import_model(model_path)).module.to(dev)
    acc_before = evaluate(original, test, objective)["accuracy"]
    tensors = {n: p for n, p in net.named_parameters()}
    trainer = Trainer(net, ConstraintSet([], []), tensors, train, val, objective,
                      TrainConfig(admm_epochs=0, finetune_epochs=epochs, batch_size=batch, finetune_lr=lr, seed=seed))
    trainer.run()
    return {"accuracy_before": acc_before, "accuracy_after": evaluate(net, test, objective)["accuracy"]}


def run_torch_pruning(model_path, arch, data, target, epochs, limit, test_limit, batch, lr, device, tmp, seed=0,
                      metric="params", global_pruning=True):
    """Torch-Pruning's L1 magnitude pruning (one ranking over all layers, or the same ratio in every
    layer), its ratio bisected until the model is `target` times smaller in `metric` (parameters, or
    FLOPs as acc counts them), then fine-tuned like acc."""
    import torch

    tp = torch_pruning()
    base = torch_model(arch, model_path)
    base_counts = onnx_counts(base, tmp)
    example = torch.randn(1, 3, 32, 32)

    def pruned(ratio):
        net = copy.deepcopy(base)
        classifier = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1:]  # its outputs are the classes
        pruner = tp.pruner.MagnitudePruner(net, example, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, global_pruning=global_pruning, ignored_layers=classifier)
        pruner.step()
        return net

    def reduction(net) -> float:
        if metric == "flops":
            return base_counts.flops / onnx_counts(net, tmp).flops
        return base_counts.params / sum(p.numel() for p in net.parameters())

    lo, hi = 0.0, 0.95  # bisection on the ratio for the target
    for _ in range(14):
        mid = (lo + hi) / 2
        if reduction(pruned(mid)) < target:
            lo = mid
        else:
            hi = mid
    net = pruned(hi)
    accuracy = finetune_torch(net, model_path, data, epochs, limit, test_limit, batch, lr, device, seed)
    after = onnx_counts(net.cpu(), tmp)
    return {**accuracy, "params_before": base_counts.params, "params_after": after.params,
            "flops_before": base_counts.flops, "flops_after": after.flops, "ratio": hi}


def seed_summary(rows: list[dict]) -> list[dict]:
    """Per target and method: mean and sample std of the test accuracy over seeds, mean seconds."""
    import statistics

    out = []
    for target, method in dict.fromkeys((r["target"], r["method"]) for r in rows):
        acc = [r["accuracy_after"] for r in rows if (r["target"], r["method"]) == (target, method)]
        sec = [r["seconds"] for r in rows if (r["target"], r["method"]) == (target, method)]
        out.append({"target": target, "method": method, "seeds": len(acc), "mean": statistics.mean(acc),
                    "std": statistics.stdev(acc) if len(acc) > 1 else 0.0, "seconds": statistics.mean(sec)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "resnet20.onnx"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--targets", default="4")
    p.add_argument("--full", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--budget-epochs", type=int, default=None, help="epochs per round (default 4, --full 20)")
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--metric", choices=["params", "flops", "nonzero"], default="params")
    p.add_argument("--seeds", default="0", help="comma-separated; with several, the table adds mean and std per method")
    p.add_argument("--methods", default="search,uniform,torch-pruning",
                   help="comma-separated: search, uniform, torch-pruning (global), torch-pruning-uniform")
    p.add_argument("--recover-cut", type=int, default=None, help="acc's --recover-cut (default: acc's default)")
    p.add_argument("--peer-epochs", default=None,
                   help="Torch-Pruning's fine-tuning epochs, comma-separated for several rows (default: acc's epochs; "
                        "more gives the peer acc's wall time: accuracy at equal time)")
    p.add_argument("--lr", type=float, default=None, help="acc's learning rate (default: acc's default)")
    p.add_argument("--peer-lr", type=float, default=0.01, help="Torch-Pruning's fine-tuning learning rate (default 0.01)")
    p.add_argument("--arch", default=None,
                   help="the models/ definition of --model, for Torch-Pruning (default: the model file's name, e.g. "
                        "mobilenetv2 for .../mobilenetv2.onnx); the ONNX must be that definition's export")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    from models.export import REGISTRY

    arch = args.arch or Path(args.model).stem
    if arch not in REGISTRY:
        p.error(f"--arch: {arch!r} is not a CIFAR model of models/ ({', '.join(sorted(REGISTRY))})")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    epochs = args.budget_epochs or (20 if args.full else 4)
    limit = args.train_images or (None if args.full else 4000)
    test_limit = args.test_images or (None if args.full else 2000)
    batch = 256 if device == "cuda" else 128
    # Per model and process: runs of other models or seeds may go on side by side.
    work = ROOT / "benchmarks" / ".work" / f"compile_cifar10_{arch}_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    methods = args.methods.split(",")
    peer_epoch_list = [int(e) for e in args.peer_epochs.split(",")] if args.peer_epochs else [epochs * args.rounds]
    extra = {} if args.recover_cut is None else {"recover_cut": args.recover_cut}
    if args.lr is not None:
        extra["lr"] = args.lr
    budget = {"model": arch, "rounds": args.rounds, "epochs_per_round": epochs, "total_epochs": epochs * args.rounds,
              "torch_pruning_finetune_epochs": peer_epoch_list, "train_images": limit or "all",
              "test_images": test_limit or 10000, "device": device, "full": args.full, "seeds": args.seeds,
              "search_steps_per_round": 8, "eval_images": 256, "search_finetune_steps": 50, "metric": args.metric,
              "recover_cut": "acc default" if args.recover_cut is None else args.recover_cut,
              "lr": "acc default" if args.lr is None else args.lr, "peer_lr": args.peer_lr}
    name = args.name or ("compile_cifar10" + ("" if arch == "resnet20" else f"_{arch}") + ("_full" if args.full else "") + ("" if args.metric == "params" else f"_{args.metric}"))
    question = f"acc compile (search) vs uniform rates vs Torch-Pruning global magnitude, same budget, {arch} CIFAR-10"

    def save(done: bool):
        """After every row (a long run that stops keeps what it measured), and at the end."""
        return record.write(name, question, rows, budget, args.out, summary=seed_summary(rows), complete=done)

    for target, seed in [(float(t), int(sd)) for t in args.targets.split(",") for sd in args.seeds.split(",")]:
        runs = [(m, s, args.metric) for m, s in (("search", "anneal"), ("uniform", "uniform")) if m in methods]
        if args.metric == "nonzero":
            runs.append(("search (filter only)", "anneal", "params"))
        for method, strategy, metric in runs:
            started = time.time()
            result = api.compile(args.model, f"{target}x", args.data, work / f"{strategy}_{metric}_{target:g}x",
                                 rounds=args.rounds, budget_epochs=epochs, search_steps=8, eval_images=256, limit=limit,
                                 test_limit=test_limit, device=device, batch_size=batch, strategy=strategy,
                                 metric=metric, progress=False, seed=seed, log=lambda m: None, **extra)
            r = result.report
            rows.append({"target": target, "seed": seed, "method": method, "metric": metric,
                         "accuracy_before": r["accuracy_before"]["test"]["accuracy"],
                         "accuracy_after": r["accuracy_after"]["test"]["accuracy"],
                         "params_before": r["params"]["before"], "params_after": r["params"]["after_dense"],
                         "nonzero_after": r["params"]["after_nonzero"],
                         "flops_before": r["flops"]["before"], "flops_after": r["flops"]["after"],
                         "schemes": [dict(Counter(x["scheme"] for x in pr["layers"])) for pr in r["per_round"]],
                         "rates": [x["rates"] for x in r["per_round"]],
                         "search": [{"best_energy": s.get("best_energy"), "evaluated": s.get("evaluated"),
                                     "confirmation": s.get("confirmation")} for s in r["search"]],
                         "seconds": time.time() - started})
            print(f"{target:g}x seed {seed} {rows[-1]['method']}: {100 * rows[-1]['accuracy_after']:.2f}%", flush=True)
            save(False)
        peers = [(m, m == "torch-pruning") for m in ("torch-pruning", "torch-pruning-uniform") if m in methods]
        peer_metric = "flops" if args.metric == "flops" else "params"  # nonzero: the peer prunes dense channels
        for (peer, global_pruning), peer_epochs in [(p, e) for p in peers for e in peer_epoch_list]:
            started = time.time()
            tp_row = run_torch_pruning(args.model, arch, args.data, target, peer_epochs, limit, test_limit, batch,
                                       args.peer_lr, device, work, seed, metric=peer_metric,
                                       global_pruning=global_pruning)
            method = peer if peer_epochs == epochs * args.rounds else f"{peer} ({peer_epochs} epochs)"
            rows.append({"target": target, "seed": seed, "method": method, "metric": peer_metric, **tp_row,
                         "nonzero_after": tp_row["params_after"], "epochs": peer_epochs,
                         "seconds": time.time() - started})
            print(f"{target:g}x seed {seed} {method}: {100 * rows[-1]['accuracy_after']:.2f}%", flush=True)
            save(False)
    print()
    print(f"{arch}, CIFAR-10; budget: {budget}")
    print(table(["target", "method", "test acc before", "test acc after", "params (dense)", "params (non-zero)",
                 "FLOPs", "seconds"],
                [[f"{r['target']:g}x", r["method"], f"{100 * r['accuracy_before']:.2f}%", f"{100 * r['accuracy_after']:.2f}%",
                  f"{r['params_before'] / r['params_after']:.2f}x", f"{r['params_before'] / r['nonzero_after']:.2f}x",
                  f"{r['flops_before'] / r['flops_after']:.2f}x" if r.get("flops_before") else "",
                  f"{r['seconds']:.0f}"] for r in rows], {2, 3, 4, 5, 6, 7}))
    summary = seed_summary(rows)
    if len(args.seeds.split(",")) > 1:
        print(table(["target", "method", "test acc (mean +- std)", "seconds (mean)"],
                    [[f"{s['target']:g}x", s["method"], f"{100 * s['mean']:.2f} +- {100 * s['std']:.2f}",
                      f"{s['seconds']:.0f}"] for s in summary]))
    path = save(True)
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
