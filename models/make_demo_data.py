"""Write the demo's small CIFAR-10 sample: 2,000 train images (200 per class) and 1,000 test images
(100 per class), chosen at random with a fixed seed, JPEG bytes copied as they are.

    python models/make_demo_data.py [--source ../shared/datasets/cifar10] [--out models/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from acc.data.cifar_pack import read_pack_arrays, write_pack

ROOT = Path(__file__).resolve().parent.parent


def sample_pack(source: Path, destination: Path, per_class: int, seed: int) -> int:
    arrays = read_pack_arrays(source, check_sha256=True)
    labels, offsets, jpeg = arrays["labels"], arrays["offsets"], arrays["jpeg"]
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(len(arrays["classes"]))]))
    blobs = [jpeg[offsets[i] : offsets[i + 1]].tobytes() for i in chosen]
    write_pack(destination, blobs, labels[chosen], arrays["classes"])
    return sum(len(blob) for blob in blobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "data" / "cifar10_demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, per_class, name in (("train", 200, "train.jpeg.npz"), ("test", 100, "test.jpeg.npz")):
        size = sample_pack(args.source / f"{split}.jpeg.npz", args.out / name, per_class, args.seed)
        print(f"{args.out / name}: {per_class} per class, {size / 1e6:.2f} MB of JPEG")


if __name__ == "__main__":
    main()
