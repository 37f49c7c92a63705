"""`load_dataset`: open a dataset (acc.data.sources) and decode it, all of it or a seeded random
part, into memory at the model's size."""

from __future__ import annotations

import os

from acc.data.images import ImageData, check_labels, sample_indices
from acc.data.sources import open_source
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
    source = open_source(path, split=split, num_classes=num_classes, check_sha256=check_sha256)
    data = source.decode(sample_indices(len(source), limit, seed), size)
    if data.labels is not None and num_classes is not None:
        check_labels(data.labels, len(data), num_classes, data.source)
    if not data.is_raw_images and size is not None and data.inputs.shape[2:] != tuple(size) and data.inputs.shape[1:3] != tuple(size):
        raise InputError(f"{data.source}: float inputs of shape {data.inputs.shape[1:]} do not match size {tuple(size)}")
    return data
