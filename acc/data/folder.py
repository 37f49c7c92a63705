"""An image-folder tree: ROOT/<class name>/<image files>, classes in sorted name order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from acc.data.images import ImageData, sample_indices
from acc.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def class_folders(root: Path) -> list[Path]:
    return sorted((entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")), key=lambda p: p.name)


def read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One RGB image as uint8 HWC, resized to size (height, width) when given."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise InputError(f"{path}: unreadable image ({error})") from None


def read_image_folder(
    root: str | os.PathLike, *, size: tuple[int, int] | None = None, limit: int | None = None, seed: int = 0
) -> ImageData:
    """Read the images (all, or a seeded random `limit`) under one folder per class.

    All must share a size unless `size` is given.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    folders = class_folders(root)
    if not folders:
        raise InputError(f"{root}: no class folders (expected ROOT/<class>/<images>)")
    files: list[tuple[Path, int]] = []
    for label, folder in enumerate(folders):
        files += [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(f"{root}: no images in its class folders")
    files = [files[i] for i in sample_indices(len(files), limit, seed)]
    images = [read_image(path, size) for path, _ in files]
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise InputError(f"{root}: images differ in size {sorted(shapes)[:3]}; give a preprocessing size to resize them")
    labels = np.array([label for _, label in files], dtype=np.int64)
    return ImageData(np.stack(images), labels, tuple(folder.name for folder in folders), str(root))
