"""`open_source`: pick the reader from what the path is, and open it without decoding anything.

- an .npz holding `jpeg` and `offsets`: a packed JPEG dataset (cifar_pack.PackSource)
- a folder holding `<split>.jpeg.npz`: that split of a packed dataset
- any other .npz, or an .npy: arrays (arrays.ArraySource)
- a folder holding a `<split>/` folder, else the folder itself: an image-folder tree (folder.FolderSource)
"""

from __future__ import annotations

import os
from pathlib import Path

from acc.data.arrays import ArraySource
from acc.data.cifar_pack import PackSource, is_pack
from acc.data.folder import FolderSource
from acc.data.images import Source
from acc.errors import InputError


def open_source(
    path: str | os.PathLike, *, split: str = "train", num_classes: int | None = None, check_sha256: bool = False
) -> Source:
    path = Path(path)
    if not path.exists():
        raise InputError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix == ".npz" and is_pack(path):
            return PackSource(path, check_sha256=check_sha256)
        if path.suffix in (".npz", ".npy"):
            return ArraySource(path, num_classes=num_classes)
        raise InputError(f"{path}: not a dataset (expected a folder, .npz or .npy)")
    if (path / f"{split}.jpeg.npz").is_file():
        return PackSource(path / f"{split}.jpeg.npz", check_sha256=check_sha256)
    if (path / split).is_dir():
        return FolderSource(path / split)
    return FolderSource(path)


def has_split(path: str | os.PathLike, split: str) -> bool:
    """True when the folder `path` holds that split (`<split>.jpeg.npz` or `<split>/`)."""
    path = Path(path)
    return path.is_dir() and ((path / f"{split}.jpeg.npz").is_file() or (path / split).is_dir())
