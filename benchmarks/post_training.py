"""Compression with no training at all: how close to the original does each tool stay?

For each CIFAR-10 model (the shipped ResNet-20; VGG-16 and MobileNetV2 as trained on CPU into
benchmarks/.work/trained/, skipped when not there) and each target (1.5x, 2x, 3x fewer parameters,
then FLOPs), four post-training methods from the same calibration images (512 drawn with seed 0 from
the CIFAR-10 training split; none of them trains):
  acc post-training: `acc shrink --rate R --data D` (searched rates, least-squares refit, BatchNorm);
  acc uniform --ratio: today's `acc shrink --ratio r`, r the uniform rate that meets the target;
  onnxsim 0.8.1: onnxsim.simplify (BatchNorm fused), apply_structured_pruning_cpp (its L2 filter
          ranking, sparsity bisected to the target), then apply_pruning_finetune_cpp (its layer-wise
          least-squares refit) on the same calibration images;
  torch-pruning 1.6.1: one-shot global magnitude (L1) pruning of the torch model with the same
          weights, ratio bisected to the target, classifier kept, no fine-tuning.
Accuracy on the full 10,000-image test split (onnxruntime for ONNX results, torch for
Torch-Pruning's), which nothing is chosen on. Reductions are counted by acc on the ONNX each method
writes, against the original ONNX (BatchNorm unfused; onnxsim's fused graph counts fewer).
onnxsim and Torch-Pruning are installed into benchmarks/.deps (--no-deps), never as dependencies.

    nice -n 5 python benchmarks/post_training.py            # all models there, 1.5x/2x/3x params and FLOPs
    python benchmarks/post_training.py --quick              # ResNet-20, 2x params, 256 images, 1000 test images
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPS = Path(__file__).resolve().parent / ".deps"
TRAINED = Path(__file__).resolve().parent / ".work" / "trained"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

import record  # noqa: E402
from compile_cifar10 import torch_model  # noqa: E402

from acc import api  # noqa: E402
from acc.format import table  # noqa: E402
from acc.passes.analysis import analyze  # noqa: E402
from acc.passes.counting import count  # noqa: E402
from acc.passes.importer import import_model  # noqa: E402
from acc.prune.posttrain.calibration_data import load_calibration  # noqa: E402
from acc.prune.search import Guidance, SearchConfig, cost_model  # noqa: E402

QUESTION = ("With no training and 512 calibration images, how much accuracy does each tool keep at 1.5x, 2x and 3x "
            "fewer parameters and FLOPs, and does acc's post-training shrink beat onnxsim's prune + least-squares refit?")


def deps():
    missing = [pkg for pkg, mod in (("onnxsim==0.8.1", "onnxsim"), ("torch-pruning==1.6.1", "torch_pruning"))
               if not (DEPS / mod).is_dir()]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(DEPS), *missing], check=True)
    sys.path.insert(0, str(DEPS))


def models(names: list[str]) -> dict[str, Path]:
    found = {}
    for name in names:
        path = ROOT / "models" / "resnet20.onnx" if name == "resnet20" else TRAINED / f"{name}.onnx"
        if path.is_file():
            found[name] = path
        else:
            print(f"{name}: {path} not there yet, skipped")
    return found


def counts(model) -> tuple[int, int]:
    c = count(import_model(model))
    return c.params, c.flops


def session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def free_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a free batch dim (the exports fix it at 1), so the test split runs in batches."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in list(out.graph.input) + list(out.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    del out.graph.value_info[:]
    return out


def onnx_accuracy(model, test) -> float:
    batch = 500
    try:
        sess = session(free_batch(model))
        sess.run(None, {sess.get_inputs()[0].name: np.zeros((2, *test.item_shape), np.float32)})
    except Exception:  # noqa: BLE001 - a graph that hard-codes its batch runs one image at a time
        sess, batch = session(model), 1
    name = sess.get_inputs()[0].name
    correct = 0
    for x, y in test.batches(batch):
        logits = sess.run(None, {name: x.numpy()})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
    return correct / len(test)


@torch.no_grad()
def torch_accuracy(net, test) -> float:
    net.eval()
    return sum(int((net(x).argmax(1) == y).sum()) for x, y in test.batches(500)) / len(test)


def calibration_batches(calib, batch: int = 64) -> list[torch.Tensor]:
    """The same images acc's run draws (fit, validation and held-out parts together)."""
    return [x for part in (calib.estimate, calib.validate, calib.held_out) for x, _ in part.batches(batch)]


def run_acc(path, data, target, metric, images, tmp, selection="reconstruction") -> tuple[onnx.ModelProto, dict]:
    result = api.shrink(path, rate=target, metric=metric, data=data, calibration_images=images, test_images=0,
                        selection=selection)
    post = result.details
    return result.model, {"selection": post["selection"]["criterion"], "held_out_relative_l2": post["held_out"]["pruned"]["relative_l2"],
                          "held_out_agreement": post["held_out"]["pruned"].get("top1_agreement"),
                          "allocation": post["allocation"]["chosen"],
                          "refitted_layers": sum(1 for r in post["recovery"]["layers"] if r["refitted"]),
                          "batchnorm_recalibrated": post["recovery"]["batchnorm"]["recalibrated"]}


def run_uniform(path, target, metric) -> tuple[onnx.ModelProto, dict]:
    analysis = analyze(import_model(path))
    cost = cost_model(analysis, metric)
    rate = Guidance(analysis, cost, SearchConfig()).uniform_rate(cost.total(metric) / target, metric)
    return api.shrink(path, ratio=rate).model, {"ratio": rate}


def bisect(reduction_at, target: float, lo: float = 0.0, hi: float = 0.95, steps: int = 12) -> float:
    """The smallest setting in [lo, hi] whose reduction reaches `target` (reduction grows with it)."""
    if reduction_at(hi) < target:
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        if reduction_at(mid) < target:
            lo = mid
        else:
            hi = mid
    return hi


def run_onnxsim(path, target, metric, batches, before) -> tuple[onnx.ModelProto, dict]:
    import onnxsim

    fused, ok = onnxsim.simplify(onnx.load(str(path)))
    index = 0 if metric == "params" else 1

    def prune(sparsity):
        return onnxsim.apply_structured_pruning_cpp(fused, sparsity=sparsity)

    cache = {}

    def reduction_at(sparsity):
        if sparsity not in cache:
            cache[sparsity] = before[index] / counts(prune(sparsity))[index]
        return cache[sparsity]

    sparsity = bisect(reduction_at, target)
    name = fused.graph.input[0].name
    images = [{name: x[i:i + 1].numpy()} for x in batches for i in range(len(x))]  # its graphs take a batch of 1
    refit = onnxsim.apply_pruning_finetune_cpp(fused, prune(sparsity), calibration_data=images)
    return refit, {"sparsity": sparsity, "simplified": bool(ok)}


def run_torch_pruning(name, path, target, metric, before, tmp) -> tuple[torch.nn.Module, dict]:
    import torch_pruning as tp

    base = torch_model(name, path)
    example = torch.randn(1, 3, 32, 32)

    def pruned(ratio):
        net = copy.deepcopy(base)
        if ratio > 0:
            net_classifier = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1:]
            tp.pruner.MagnitudePruner(net, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, global_pruning=True, ignored_layers=net_classifier).step()
        return net

    onnx_path = Path(tmp) / f"tp_{name}.onnx"

    def exported(net) -> Path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net.eval(), (example,), str(onnx_path), input_names=["input"], output_names=["logits"],
                              opset_version=17, do_constant_folding=False, dynamo=False)
        return onnx_path

    index = 0 if metric == "params" else 1

    def reduction_at(ratio):  # counted by acc on the ONNX, as every other method's
        return before[index] / counts(exported(pruned(ratio)))[index]

    # Its global ratio stops meaning fewer parameters near the top (0.95 kept more than 0.8 on ResNet-20).
    ratio = bisect(reduction_at, target, hi=0.9, steps=10)
    net = pruned(ratio)
    return net, {"global_ratio": ratio, "onnx": exported(net)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,vgg16,mobilenetv2")
    p.add_argument("--targets", default="1.5,2,3")
    p.add_argument("--metrics", default="params,flops")
    p.add_argument("--methods", default="acc,acc-l1,uniform,onnxsim,torch-pruning")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"))
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--test-images", type=int, default=None, help="default: the whole test split")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (1: fastest on a busy 2-core machine)")
    p.add_argument("--quick", action="store_true", help="ResNet-20, 2x params, 256 images, 1000 test images")
    p.add_argument("--resume", action="store_true", help="keep the rows of the last run's JSON (same options), "
                   "computing only the missing ones and those of --redo")
    p.add_argument("--redo", default="", help="with --resume: methods whose rows are computed again")
    p.add_argument("--name", default="post_training")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.targets, args.metrics = "resnet20", "2", "params"
        args.calibration_images, args.test_images = 256, args.test_images or 1000
    torch.set_num_threads(args.threads)
    deps()
    methods = args.methods.split(",")
    rows = []
    started = time.time()
    earlier = {}
    last = Path(args.out or record.RESULTS) / f"{args.name}.json"
    if args.resume and last.is_file():
        redo = set(filter(None, args.redo.split(",")))
        earlier = {(r["model"], r["metric"], r["target"], r["method"]): r for r in json.loads(last.read_text())["rows"]
                   if r.get("error") is None and r["method"] not in redo}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models(args.models.split(",")).items():
            analysis = analyze(import_model(path))
            calib = load_calibration(args.data, path, analysis, args.calibration_images, 0, test_images=args.test_images)
            test, batches = calib.test, calibration_batches(calib)
            before = counts(path)
            base_accuracy = onnx_accuracy(onnx.load(str(path)), test)
            print(f"{name}: {before[0]:,} parameters, {before[1]:,} FLOPs, {base_accuracy:.2%} on {len(test)} test images",
                  flush=True)
            for metric in args.metrics.split(","):
                for target in [float(t) for t in args.targets.split(",")]:
                    for method in methods:
                        if (name, metric, target, method) in earlier:
                            rows.append(earlier[(name, metric, target, method)])
                            print(f"  {metric} {target:g}x {method}: kept from the last run", flush=True)
                            continue
                        t0 = time.time()
                        try:
                            if method in ("acc", "acc-l1"):
                                model, extra = run_acc(path, args.data, target, metric, args.calibration_images, tmp,
                                                       "l1" if method == "acc-l1" else "reconstruction")
                            elif method == "uniform":
                                model, extra = run_uniform(path, target, metric)
                            elif method == "onnxsim":
                                model, extra = run_onnxsim(path, target, metric, batches, before)
                            else:
                                net, extra = run_torch_pruning(name, path, target, metric, before, tmp)
                                model = extra.pop("onnx")
                            seconds = time.time() - t0
                            after = counts(model)
                            accuracy = onnx_accuracy(onnx.load(str(model)) if isinstance(model, Path) else model, test)
                            error = None
                        except Exception as err:  # noqa: BLE001 - a method that fails is a row that says why
                            seconds, after, accuracy, extra, error = time.time() - t0, (None, None), None, {}, str(err)[:300]
                        row = {"model": name, "metric": metric, "target": target, "method": method,
                               "params_reduction": before[0] / after[0] if after[0] else None,
                               "flops_reduction": before[1] / after[1] if after[1] else None,
                               "accuracy_before": base_accuracy, "accuracy": accuracy,
                               "drop_points": None if accuracy is None else 100 * (base_accuracy - accuracy),
                               "seconds": seconds, "error": error, **extra}
                        rows.append(row)
                        print(f"  {metric} {target:g}x {method}: " + (f"{accuracy:.2%} ({row['params_reduction']:.2f}x params, "
                              f"{row['flops_reduction']:.2f}x FLOPs, {seconds:.0f} s)" if error is None else f"failed: {error}"),
                              flush=True)
                        record.write(args.name, QUESTION, rows, budget(args), args.out, seconds=time.time() - started)
    print(table(["model", "metric", "target", "method", "params", "FLOPs", "accuracy", "drop (points)", "seconds"],
                [[r["model"], r["metric"], f"{r['target']:g}x", r["method"],
                  "-" if r["params_reduction"] is None else f"{r['params_reduction']:.2f}x",
                  "-" if r["flops_reduction"] is None else f"{r['flops_reduction']:.2f}x",
                  "failed" if r["accuracy"] is None else f"{r['accuracy']:.2%}",
                  "-" if r["drop_points"] is None else f"{r['drop_points']:.1f}", f"{r['seconds']:.0f}"] for r in rows],
                {4, 5, 6, 7, 8}))
    path = record.write(args.name, QUESTION, rows, budget(args), args.out, seconds=time.time() - started)
    print(f"wrote {path}")
    return 0


def budget(args) -> dict:
    return {"calibration_images": args.calibration_images, "calibration_seed": 0,
            "test_images": args.test_images or "all", "training": "none", "threads": args.threads,
            "run": "quick" if args.quick else "default", "search": "acc shrink --rate defaults"}


if __name__ == "__main__":
    raise SystemExit(main())
