"""Arrays of inputs in .npy (inputs only) or .npz (inputs and optional labels).

An .npz names its inputs `inputs`, `x`, `images` or `data` (or holds a single array), and its
labels `labels` or `y`. Inputs are float [N, C, H, W] (already preprocessed) or uint8 [N, H, W, C]
(raw images, preprocessed like image files).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from acc.data.images import ImageData, check_inputs, check_labels, sample_indices
from acc.errors import InputError

INPUT_KEYS = ("inputs", "x", "images", "data")
LABEL_KEYS = ("labels", "y")


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: unreadable npy ({error})") from None


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files
            input_key = next((key for key in INPUT_KEYS if key in names), None)
            label_key = next((key for key in LABEL_KEYS if key in names), None)
            if input_key is None:
                others = [key for key in names if key != label_key]
                if len(others) != 1:
                    raise InputError(f"{path}: cannot tell the inputs array among {names}; name it 'inputs'")
                input_key = others[0]
            return archive[input_key], None if label_key is None else archive[label_key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(f"{path}: unreadable npz ({error})") from None


def read_arrays(
    path: str | os.PathLike, *, num_classes: int | None = None, limit: int | None = None, seed: int = 0
) -> ImageData:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset file not found: {path}")
    if path.suffix == ".npy":
        inputs, labels = load_npy(path), None
    elif path.suffix == ".npz":
        inputs, labels = load_npz(path)
    else:
        raise InputError(f"{path}: expected a .npy or .npz file")
    inputs = check_inputs(inputs, str(path))
    if labels is not None:
        labels = check_labels(labels, len(inputs), num_classes, str(path))
    data = ImageData(inputs, labels, None, str(path))
    return data if limit is None else data.subset(sample_indices(len(data), limit, seed))
