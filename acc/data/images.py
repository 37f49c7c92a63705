"""What every reader shares: the lazy `Source` (count, labels, classes, one item decoded by
index), the in-memory `ImageData` a source decodes into, and the checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acc.errors import InputError


@dataclass
class ImageData:
    """Inputs with optional labels.

    `inputs` is either raw images, uint8 [N, H, W, C] (preprocessing still to apply), or model-ready
    float32 [N, C, H, W] (taken as already preprocessed). `labels` is int64 [N] or None.
    """

    inputs: np.ndarray
    labels: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def is_raw_images(self) -> bool:
        return self.inputs.dtype == np.uint8

    def subset(self, indices) -> "ImageData":
        indices = np.asarray(indices)
        labels = None if self.labels is None else self.labels[indices]
        return ImageData(self.inputs[indices], labels, self.classes, self.source)


class Source:
    """A dataset opened, not decoded: it knows its count, labels and classes, and decodes one item
    by index (`read`). Items are raw images, uint8 [H, W, C] (`raw`), or model-ready float arrays.
    A subclass sets `path`, `labels`, `classes`, `raw`, and implements `__len__` and `read`."""

    path: str = ""
    labels: np.ndarray | None = None  # int64 [N]
    classes: tuple[str, ...] | None = None
    raw: bool = True
    skipped: int = 0  # files passed over (not images)

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> np.ndarray:
        """Item `index` as stored (a decode error is an InputError naming the file)."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """Where item `index` comes from, for messages."""
        return f"{self.path}[{index}]"

    def check(self, indices) -> None:
        """Cheap checks of the items that will be used, before any is decoded (none by default)."""

    def decode(self, indices=None, size: tuple[int, int] | None = None) -> ImageData:
        """The items at `indices` (all by default) decoded into memory, raw images resized to `size`."""
        from acc.data.preprocess import resize_image

        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            raise InputError(f"{self.path}: holds no images")
        self.check(indices)
        items = [self.read(int(i)) for i in indices]
        if self.raw:
            items = [resize_image(item, size) for item in items]
        shapes = {item.shape for item in items}
        if len(shapes) != 1:
            raise InputError(f"{self.path}: images differ in size {sorted(shapes)[:3]}; give a preprocessing size to resize them")
        labels = None if self.labels is None else self.labels[indices]
        return ImageData(np.stack(items), labels, self.classes, self.path)


def check_labels(labels, count: int, num_classes: int | None, source: str) -> np.ndarray:
    """Labels must be integers, one per input, in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != count:
        raise InputError(f"{source}: expected {count} labels in a 1-D array, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise InputError(f"{source}: labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if count and labels.min() < 0:
        raise InputError(f"{source}: label {labels.min()} is negative")
    if count and num_classes is not None and labels.max() >= num_classes:
        raise InputError(f"{source}: label {labels.max()} is out of range for {num_classes} classes")
    return labels


def check_inputs(inputs: np.ndarray, source: str, convert: bool = True) -> np.ndarray:
    """Accept uint8 NHWC images (1, 3 or 4 channels) or float NCHW arrays (as float32 when
    `convert`); refuse anything else."""
    if inputs.ndim != 4:
        raise InputError(f"{source}: inputs must be 4-D (N,C,H,W float or N,H,W,C uint8), got shape {inputs.shape}")
    if len(inputs) == 0:
        raise InputError(f"{source}: holds no inputs")
    if inputs.dtype == np.uint8:
        if inputs.shape[-1] not in (1, 3, 4):
            raise InputError(f"{source}: uint8 images must be N,H,W,C with 1, 3 or 4 channels, got shape {inputs.shape}")
        return inputs
    if inputs.dtype.kind == "f":
        return inputs.astype(np.float32, copy=False) if convert else inputs
    raise InputError(f"{source}: inputs must be uint8 images or float arrays, got {inputs.dtype}")


def sample_indices(count: int, limit: int | None, seed: int) -> np.ndarray:
    """All indices, or a seeded random `limit` of them in ascending order.

    Datasets are often sorted by class, so the first `limit` items would be one class only.
    """
    if limit is None or limit >= count:
        return np.arange(count)
    if limit <= 0:
        raise InputError(f"limit must be positive, got {limit}")
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))
