"""`load_dataset`: pick the reader from what the path is, and bring images to the model's size.

- an .npz holding `jpeg` and `offsets`: a packed JPEG dataset (cifar_pack)
- a folder holding `<split>.jpeg.npz`: that split of a packed dataset
- any other .npz, or an .npy: arrays (arrays)
- a folder holding a `<split>/` folder, else the folder itself: an image-folder tree (folder)
"""

from __future__ import annotations

import os
from pathlib import Path

from acc.data.arrays import read_arrays
from acc.data.cifar_pack import is_pack, read_pack
from acc.data.folder import read_image_folder
from acc.data.images import ImageData, check_labels
from acc.data.preprocess import resize_images
from acc.errors import InputError


def load_dataset(
    path: str | os.PathLike,
    *,
    split: str = "train",
    size: tuple[int, int] | None = None,
    limit: int | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    check_sha256: bool = False,
) -> ImageData:
    """Read a dataset (all of it, or a seeded random `limit` of it).

    Raw images come back uint8 NHWC, resized to `size` (height, width) when given.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix == ".npz" and is_pack(path):
            data = read_pack(path, check_sha256=check_sha256, limit=limit, seed=seed)
        elif path.suffix in (".npz", ".npy"):
            data = read_arrays(path, num_classes=num_classes, limit=limit, seed=seed)
        else:
            raise InputError(f"{path}: not a dataset (expected a folder, .npz or .npy)")
    elif (path / f"{split}.jpeg.npz").is_file():
        data = read_pack(path / f"{split}.jpeg.npz", check_sha256=check_sha256, limit=limit, seed=seed)
    elif (path / split).is_dir():
        data = read_image_folder(path / split, size=size, limit=limit, seed=seed)
    else:
        data = read_image_folder(path, size=size, limit=limit, seed=seed)
    if data.labels is not None and num_classes is not None:
        check_labels(data.labels, len(data), num_classes, data.source)
    if data.is_raw_images:
        data.inputs = resize_images(data.inputs, size)
    elif size is not None and data.inputs.shape[2:] != tuple(size) and data.inputs.shape[1:3] != tuple(size):
        raise InputError(f"{data.source}: float inputs of shape {data.inputs.shape[1:]} do not match size {tuple(size)}")
    return data
