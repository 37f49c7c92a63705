"""Train a models/ network on packed CIFAR-10 and write its ONNX, preprocessing and training record.

Self-contained on purpose: it imports only torch, numpy, Pillow, onnx, onnxruntime and models/
(never acc), so it runs on a GPU machine whose Python has just those.

    python3 models/train_cifar.py --data DIR --model resnet20 --epochs 120 --out DIR

DIR holds train.jpeg.npz and test.jpeg.npz (arrays jpeg, offsets, labels, classes). The whole
dataset is decoded once and kept on the device as uint8; augmentation (random crop with 4 pixels
of black padding, horizontal flip) is done per epoch on the device, vectorised. bf16 autocast and
channels_last on CUDA. SGD (momentum 0.9, Nesterov), lr 0.1 per 128 images of batch, linear
warm-up then cosine decay to zero, weight decay 5e-4, label smoothing 0.1.

--time-budget S fits the run to S seconds of training instead of --epochs: the epoch count is
fixed after the second epoch (the first one pays for cuDNN autotuning) from its measured time, and
the learning-rate schedule is laid out over that count from then on.

Writes into --out: <model>.onnx (legacy exporter, eval mode, BatchNormalization nodes kept, input
"input" [1,3,32,32] float32 normalised, output "logits"), <model>.preprocess.json (mean, std,
size, layout, class names), <model>.train.json (accuracy, epochs, hyperparameters, seconds,
device, versions), <model>.pt (state_dict).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from anywhere
from models.export import REGISTRY, TRANSFORMER_REGISTRY, build, export_onnx  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PADDING = 4


def decode_pack(path: Path, limit: int | None, seed: int, workers: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images [N, 3, 32, 32], labels [N], class names; a seeded random `limit` of them if given."""
    with np.load(path, allow_pickle=False) as archive:
        jpeg, offsets, labels, classes = archive["jpeg"], archive["offsets"], archive["labels"], archive["classes"]
    indices = np.arange(len(labels))
    if limit is not None and limit < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(len(indices), limit, replace=False))

    def decode(index: int) -> np.ndarray:
        with Image.open(io.BytesIO(jpeg[offsets[index] : offsets[index + 1]].tobytes())) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)

    # Pillow releases the GIL while decoding, so threads spread it over the cores.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = np.stack(list(pool.map(decode, indices, chunksize=256)))
    return images.transpose(0, 3, 1, 2).copy(), labels[indices].astype(np.int64), [str(c) for c in classes]


def augment(padded: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crops of the padded uint8 images [N, C, 40, 40], half of them flipped left-right."""
    count, _, padded_size, _ = padded.shape
    size = padded_size - 2 * PADDING
    device = padded.device
    top = torch.randint(0, 2 * PADDING + 1, (count,), device=device, generator=generator)
    left = torch.randint(0, 2 * PADDING + 1, (count,), device=device, generator=generator)
    flip = torch.rand(count, device=device, generator=generator) < 0.5
    steps = torch.arange(size, device=device)
    rows = (top[:, None] + steps)[:, :, None]  # [N, 32, 1]
    column_steps = torch.where(flip[:, None], steps.flip(0), steps)
    columns = (left[:, None] + column_steps)[:, None, :]  # [N, 1, 32]
    batch = torch.arange(count, device=device)[:, None, None]
    # Advanced indices first, channel slice last: the result is [N, 32, 32, C].
    return padded.permute(0, 2, 3, 1)[batch, rows, columns].permute(0, 3, 1, 2)


class Normalise:
    def __init__(self, device: torch.device, memory_format: torch.memory_format):
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
        self.memory_format = memory_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 10 % to 100 %, then cosine decay to zero at `total_steps`."""
    if step < warmup_steps:
        return 0.1 + 0.9 * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, images, labels, normalise, batch_size, autocast) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        with autocast():
            logits = model(normalise(images[start : start + batch_size]))
        correct += (logits.argmax(1) == labels[start : start + batch_size]).sum().item()
    return correct / len(images)


def check_onnx(path: Path, model, images: np.ndarray, labels: np.ndarray) -> dict:
    """Run the written ONNX in onnxruntime on test images: accuracy and largest difference from torch."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mean = np.array(MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(STD, np.float32).reshape(1, 3, 1, 1)
    correct, max_difference = 0, 0.0
    model.eval()
    for image, label in zip(images, labels):
        array = ((image[None].astype(np.float32) / 255 - mean) / std).astype(np.float32)
        logits = session.run(None, {"input": array})[0]
        with torch.no_grad():
            expected = model(torch.from_numpy(array)).numpy()
        max_difference = max(max_difference, float(np.abs(logits - expected).max()))
        correct += int(logits.argmax() == label)
    return {"images": len(images), "accuracy": correct / len(images), "max_abs_difference_vs_torch": max_difference}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a CIFAR-10 model of models/ and export it to ONNX.")
    parser.add_argument("--data", type=Path, required=True, help="folder with train.jpeg.npz and test.jpeg.npz")
    parser.add_argument("--model", default="resnet20", choices=sorted(REGISTRY) + sorted(TRANSFORMER_REGISTRY))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds of training; sets the epoch count")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                        help="adamw for transformers (betas 0.9/0.999; pass --weight-decay 0.05)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default sgd 0.1 * batch / 128, adamw 1e-3 * batch / 512)")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--warmup-epochs", type=float, default=2.0)
    parser.add_argument("--limit", type=int, default=None, help="train and test on a seeded random subset of this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (optional)")
    parser.add_argument("--no-amp", action="store_true", help="train in float32 even on CUDA")
    parser.add_argument("--onnx-check", type=int, default=1000, help="test images to run through the ONNX (0: skip)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="JPEG decoding threads")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.time()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    use_amp = on_cuda and not args.no_amp
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format

    train_images, train_labels, classes = decode_pack(args.data / "train.jpeg.npz", args.limit, args.seed, args.workers)
    test_images_np, test_labels_np, _ = decode_pack(args.data / "test.jpeg.npz", args.limit, args.seed, args.workers)
    print(f"decoded {len(train_images)} train / {len(test_images_np)} test images in {time.time() - started:.1f} s", flush=True)
    padded_train = F.pad(torch.from_numpy(train_images).to(device), (PADDING,) * 4)  # black borders
    train_labels_t = torch.from_numpy(train_labels).to(device)
    test_images = torch.from_numpy(test_images_np).to(device)
    test_labels = torch.from_numpy(test_labels_np).to(device)
    normalise = Normalise(device, memory_format)

    model = build(args.model, num_classes=len(classes)).to(device, memory_format=memory_format)
    trained = torch.compile(model) if args.compile else model
    if args.optimizer == "adamw":
        lr = args.lr if args.lr is not None else 1e-3 * args.batch_size / 512
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    else:
        lr = args.lr if args.lr is not None else 0.1 * args.batch_size / 128
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, nesterov=True,
                                    weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_images) / args.batch_size)
    warmup_steps = max(1, round(args.warmup_epochs * steps_per_epoch))
    epochs = args.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, warmup_steps, epochs * steps_per_epoch))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)

    history = []
    training_started = time.time()
    epoch = 0
    while epoch < epochs:
        epoch_started = time.time()
        trained.train()
        augmented = augment(padded_train, generator)
        order = torch.randperm(len(augmented), device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            inputs, targets = normalise(augmented[batch]), train_labels_t[batch]
            with autocast():
                logits = trained(inputs)
                loss = criterion(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(batch)
            correct += (logits.argmax(1) == targets).sum()
        test_accuracy = evaluate(trained, test_images, test_labels, normalise, 1024, autocast)
        seconds = time.time() - epoch_started
        epoch += 1
        record = {
            "epoch": epoch,
            "loss": loss_sum.item() / len(order),
            "train_accuracy": correct.item() / len(order),
            "test_accuracy": test_accuracy,
            "seconds": seconds,
        }
        history.append(record)
        print(
            f"epoch {epoch:3d}/{epochs}  loss {record['loss']:.4f}  train {record['train_accuracy']:.4f}  "
            f"test {test_accuracy:.4f}  {seconds:.2f} s",
            flush=True,
        )
        if args.time_budget is not None and epoch == 2:
            # The schedule reads `epochs` when it is called, so this re-lays it over the new count.
            per_epoch = seconds
            epochs = max(epoch + 1, int((args.time_budget - (time.time() - training_started)) / per_epoch) + epoch)
            print(f"time budget {args.time_budget:.0f} s at {per_epoch:.2f} s/epoch: {epochs} epochs", flush=True)
    training_seconds = time.time() - training_started

    # Export and checks in float32 on the CPU, in the plain memory layout.
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    cpu_normalise = Normalise(torch.device("cpu"), torch.contiguous_format)
    float32 = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    final_accuracy = evaluate(model, test_images.cpu(), test_labels.cpu(), cpu_normalise, 1024, float32)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, args.out / f"{args.model}.onnx", dynamo=False)
    torch.save(model.state_dict(), args.out / f"{args.model}.pt")
    preprocess = {"mean": list(MEAN), "std": list(STD), "size": [32, 32], "layout": "NCHW", "classes": classes}
    (args.out / f"{args.model}.preprocess.json").write_text(json.dumps(preprocess, indent=2) + "\n")
    onnx_check = None
    if args.onnx_check:
        # The pack is sorted by class: take images spread over the whole test set, not the first ones.
        spread = np.unique(np.linspace(0, len(test_images_np) - 1, args.onnx_check).astype(np.int64))
        onnx_check = check_onnx(onnx_path, model, test_images_np[spread], test_labels_np[spread])
    summary = {
        "model": args.model,
        "test_accuracy": final_accuracy,
        "test_images": len(test_images_np),
        "train_images": len(train_images),
        "epochs": epochs,
        "hyperparameters": {
            "batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "lr": lr,
            "momentum": args.momentum,
            "nesterov": True,
            "weight_decay": args.weight_decay,
            "label_smoothing": args.label_smoothing,
            "warmup_epochs": args.warmup_epochs,
            "schedule": "linear warm-up, cosine to zero, per step",
            "augmentation": "random crop 32 with 4 px black padding, horizontal flip",
            "amp": "bf16" if use_amp else "none",
            "channels_last": on_cuda,
            "compile": args.compile,
            "seed": args.seed,
            "limit": args.limit,
            "time_budget": args.time_budget,
        },
        "training_seconds": training_seconds,
        "total_seconds": time.time() - started,
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "onnx_check": onnx_check,
        "history": history,
        "note": "CIFAR-10 from JPEG-encoded images: close to, not identical with, accuracy on the lossless batches",
    }
    (args.out / f"{args.model}.train.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"final test accuracy {final_accuracy:.4f} (float32), {training_seconds:.0f} s training; ONNX check {onnx_check}")
    print(f"wrote {args.out}/{args.model}.{{onnx,pt,preprocess.json,train.json}}")


if __name__ == "__main__":
    main()
