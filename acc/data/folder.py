"""An image-folder tree: ROOT/<class name>/<image files>, classes in sorted name order.

`FolderSource` lists the files and labels only; `check` opens the chosen files' headers (cheap:
no pixels are decoded) so that a file that is not an image is named before training starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from acc.data.images import ImageData, Source, sample_indices
from acc.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def class_folders(root: Path) -> list[Path]:
    return sorted((entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")), key=lambda p: p.name)


def unreadable(path: Path, error: Exception) -> InputError:
    reason = "not an image Pillow can read" if isinstance(error, UnidentifiedImageError) else str(error)
    return InputError(f"{path}: unreadable image ({reason})")


def read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One RGB image as uint8 HWC, resized to size (height, width) when given."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except IMAGE_ERRORS as error:
        raise unreadable(path, error) from None


class FolderSource(Source):
    """The files under one folder per class, with their labels; nothing is opened until `check`."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"dataset folder not found: {root}")
        folders = class_folders(root)
        if not folders:
            raise InputError(f"{root}: no class folders (expected ROOT/<class>/<images>)")
        self.path = str(root)
        self.files: list[Path] = []
        labels = []
        for label, folder in enumerate(folders):
            entries = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
            images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
            self.skipped += len(entries) - len(images)
            self.files += images
            labels += [label] * len(images)
        if not self.files:
            raise InputError(f"{root}: no images in its class folders")
        self.labels = np.array(labels, dtype=np.int64)
        self.classes = tuple(folder.name for folder in folders)

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return str(self.files[index])

    def read(self, index: int) -> np.ndarray:
        return read_image(self.files[index], None)

    def check(self, indices) -> None:
        for index in np.asarray(indices).tolist():
            try:
                with Image.open(self.files[index]):
                    pass
            except IMAGE_ERRORS as error:
                raise unreadable(self.files[index], error) from None


def read_image_folder(
    root: str | os.PathLike, *, size: tuple[int, int] | None = None, limit: int | None = None, seed: int = 0
) -> ImageData:
    """Read the images (all, or a seeded random `limit`) under one folder per class.

    All must share a size unless `size` is given.
    """
    source = FolderSource(root)
    return source.decode(sample_indices(len(source), limit, seed), size)
