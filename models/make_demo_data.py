"""Write the demo's small CIFAR-10 sample: 2,000 training images (200 per class) and 1,000 test
images (100 per class), JPEG bytes copied as they are.

Both come from CIFAR-10's *test* split, disjoint, chosen at random with a fixed seed: the shipped
ResNet-20 was trained on the whole train split, so images from it would make the demo's validation
(carved from its training data) a memorised set that says nothing about pruning damage.

    python models/make_demo_data.py [--source ../shared/datasets/cifar10] [--out models/data/cifar10_demo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from acc.data.cifar_pack import read_pack_arrays, write_pack

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PER_CLASS, TEST_PER_CLASS = 200, 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "data" / "cifar10_demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    arrays = read_pack_arrays(args.source / "test.jpeg.npz", check_sha256=True)
    labels, offsets, jpeg = arrays["labels"], arrays["offsets"], arrays["jpeg"]
    rng = np.random.default_rng(args.seed)
    picks = [rng.choice(np.flatnonzero(labels == c), TRAIN_PER_CLASS + TEST_PER_CLASS, replace=False)
             for c in range(len(arrays["classes"]))]
    parts = {"train": np.sort(np.concatenate([p[:TRAIN_PER_CLASS] for p in picks])),
             "test": np.sort(np.concatenate([p[TRAIN_PER_CLASS:] for p in picks]))}
    for split, chosen in parts.items():
        blobs = [jpeg[offsets[i]: offsets[i + 1]].tobytes() for i in chosen]
        write_pack(args.out / f"{split}.jpeg.npz", blobs, labels[chosen], arrays["classes"])
        print(f"{args.out / split}.jpeg.npz: {len(chosen)} images, {sum(map(len, blobs)) / 1e6:.2f} MB of JPEG")


if __name__ == "__main__":
    main()
