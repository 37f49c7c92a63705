"""Arrays of inputs in .npy (inputs only) or .npz (inputs and optional labels).

An .npz names its inputs `inputs`, `x`, `images` or `data` (or holds a single array), and its
labels `labels` or `y`. Inputs are float [N, C, H, W] (already preprocessed, in the model's
layout) or uint8 [N, H, W, C] (raw images, preprocessed like image files). An .npy, and an array
an .npz stores uncompressed, is memory-mapped: `ArraySource.read` touches one item's bytes.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from acc.data.images import ImageData, Source, check_inputs, check_labels, sample_indices
from acc.data.npz import member_names, read_member
from acc.data.preprocess import resize_images
from acc.errors import InputError

INPUT_KEYS = ("inputs", "x", "images", "data")
LABEL_KEYS = ("labels", "y")


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: unreadable npy ({error})") from None


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        names = member_names(path)
        input_key = next((key for key in INPUT_KEYS if key in names), None)
        label_key = next((key for key in LABEL_KEYS if key in names), None)
        if input_key is None:
            others = [key for key in names if key != label_key]
            if len(others) != 1:
                raise InputError(f"{path}: cannot tell the inputs array among {names}; name it 'inputs'")
            input_key = others[0]
        return read_member(path, input_key), None if label_key is None else read_member(path, label_key)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as error:
        raise InputError(f"{path}: unreadable npz ({error})") from None


class ArraySource(Source):
    def __init__(self, path: str | os.PathLike, *, num_classes: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"dataset file not found: {path}")
        if path.suffix == ".npy":
            inputs, labels = load_npy(path), None
        elif path.suffix == ".npz":
            inputs, labels = load_npz(path)
        else:
            raise InputError(f"{path}: expected a .npy or .npz file")
        self.path = str(path)
        self.inputs = check_inputs(inputs, self.path, convert=False)
        self.raw = inputs.dtype == np.uint8
        if labels is not None:
            self.labels = check_labels(labels, len(inputs), num_classes, self.path)

    def __len__(self) -> int:
        return len(self.inputs)

    def read(self, index: int) -> np.ndarray:
        item = np.asarray(self.inputs[index])
        return item if self.raw else item.astype(np.float32, copy=False)

    def decode(self, indices=None, size: tuple[int, int] | None = None) -> ImageData:
        """All at once (one slice of the array), raw images resized to `size`."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        inputs = np.asarray(self.inputs[indices])
        inputs = resize_images(inputs, size) if self.raw else inputs.astype(np.float32, copy=False)
        return ImageData(inputs, None if self.labels is None else self.labels[indices], None, self.path)


def read_arrays(
    path: str | os.PathLike, *, num_classes: int | None = None, limit: int | None = None, seed: int = 0
) -> ImageData:
    source = ArraySource(path, num_classes=num_classes)
    return source.decode(sample_indices(len(source), limit, seed))
