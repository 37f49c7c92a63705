"""Write the demo's CIFAR-10 sample: 10,000 training images (1,000 per class) from CIFAR-10's
train split and 2,000 test images (200 per class) from its test split, JPEG bytes copied as they
are, chosen at random with a fixed seed.

The training images are ones the shipped ResNet-20 was trained on, as they are for any user who
prunes a model with its own training data; the test images were never trained on, so the demo's
accuracy is a held-out figure. 10,000 images are what the demo's budget needs to recover a 2x
pruned ResNet-20 to within about two points (2,000 lost 16).

    python models/make_demo_data.py [--source ../shared/datasets/cifar10] [--out models/data/cifar10_demo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from acc.data.cifar_pack import read_pack_arrays, write_pack

ROOT = Path(__file__).resolve().parent.parent
PER_CLASS = {"train": 1000, "test": 200}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "data" / "cifar10_demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for split, per_class in PER_CLASS.items():
        arrays = read_pack_arrays(args.source / f"{split}.jpeg.npz", check_sha256=True)
        labels, offsets, jpeg = arrays["labels"], arrays["offsets"], arrays["jpeg"]
        chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                         for c in range(len(arrays["classes"]))]))
        blobs = [jpeg[offsets[i]: offsets[i + 1]].tobytes() for i in chosen]
        write_pack(args.out / f"{split}.jpeg.npz", blobs, labels[chosen], arrays["classes"])
        print(f"{args.out / split}.jpeg.npz: {len(chosen)} images, {sum(map(len, blobs)) / 1e6:.2f} MB of JPEG")


if __name__ == "__main__":
    main()
