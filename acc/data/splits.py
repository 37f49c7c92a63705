"""The training, validation and test data of a run, in memory or streamed.

The training split (all of it, or a seeded random `limit`) is opened without decoding; a seeded
random `validation_fraction` of it is held out for validation; a `test` split beside it, when the
folder has one, is only ever scored. If the decoded images at the stored size (acc.data.augment:
uint8 at the model's size, or the imagenet evaluation cover) fit `cache_mb`, everything is
decoded once into TensorData (the fast path: vectorised augmentation, no worker processes);
otherwise the splits stream through DataLoader workers (StreamData). Both give the same batches
for the cifar, resize and none presets. `describe()` of the training data says which was taken.

Inside `reuse_decoded()` (a compile run holds it open) a split decoded once is reused by every later
open_splits of the same images: each round's pruning and search, and every round's test split.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch

from acc.data.augment import View
from acc.data.images import Source, sample_indices
from acc.data.preprocess import Preprocess
from acc.data.sources import has_split, open_source
from acc.data.stream import StreamData
from acc.errors import InputError

DEFAULT_CACHE_MB = 1024.0
MB = 1 << 20
_decoded: dict | None = None  # (what was read) -> TensorData, while reuse_decoded() is open


@contextmanager
def reuse_decoded():
    """Within the block, open_splits decodes the same images once (nested blocks share the outer one's)."""
    global _decoded
    outer = _decoded
    _decoded = {} if outer is None else outer
    try:
        yield
    finally:
        _decoded = outer


def _in_memory(data: StreamData, key) -> "TensorData":
    if _decoded is None:
        return data.in_memory()
    if key not in _decoded:
        _decoded[key] = data.in_memory()
    return _decoded[key]


def stored_bytes(view: View, item: np.ndarray) -> int:
    """Memory one item takes in TensorData (uint8 raw images, float32 arrays)."""
    if not view.raw:
        return int(np.prod(item.shape)) * 4
    height, width = view.stored_size or item.shape[:2]
    return height * width * item.shape[-1]


def check_classes(train: Source, test: Source, path) -> None:
    """Train and test must name the same classes in the same order (labels are indices into them)."""
    if train.classes is None or test.classes is None or train.classes == test.classes:
        return
    only_train = [c for c in train.classes if c not in test.classes]
    only_test = [c for c in test.classes if c not in train.classes]
    if not only_train and not only_test:
        raise InputError(f"{path}: the train and test splits list the same classes in another order")

    def brief(names):
        return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "") if names else "none"

    raise InputError(f"{path}: the train and test splits have different classes (only in train: {brief(only_train)}; "
                     f"only in test: {brief(only_test)})")


def open_splits(
    path: str | os.PathLike,
    pre: Preprocess,
    input_shape,
    *,
    labels: bool | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    workers: int | None = None,
    cache_mb: float = DEFAULT_CACHE_MB,
):
    """(train, validation, test or None, preprocessing with the augment preset resolved)."""
    if cache_mb is None or cache_mb < 0:
        raise InputError(f"--cache-mb must be 0 or more, got {cache_mb}")
    source = open_source(path, split="train")
    if labels and source.labels is None:
        raise InputError(f"{path}: --labels was given but the data has no labels")
    if pre.augment is None and source.labels is None:
        pre = replace(pre, augment="resize")  # unlabelled images (detectors, segmenters): no geometry change
    view = View.for_data(pre, source.raw)
    pre = replace(pre, augment=view.preset)
    indices = sample_indices(len(source), limit, seed)
    if len(indices) < 2:
        raise InputError(f"{path}: needs at least 2 inputs")
    source.check(indices)
    first = source.read(int(indices[0]))
    if source.raw:
        view.check_channels(first.shape[-1], source.path)
    shape = tuple(view.item(first, None, source.name(int(indices[0]))).shape)
    if shape != tuple(input_shape[1:]):
        raise InputError(f"{path}: inputs of shape {shape}, the model takes {tuple(input_shape[1:])}")
    full = StreamData(source, view, indices, workers=workers)
    test, test_source = None, None
    if has_split(path, "test"):
        test_source = open_source(path, split="test")
        check_classes(source, test_source, path)
        # A fixed sample: every round and every method is scored on the same test images.
        test_indices = sample_indices(len(test_source), test_limit, 0)
        test_source.check(test_indices)
        test = StreamData(test_source, View.for_data(pre, test_source.raw), test_indices, workers=workers)
        if test.item_shape != shape:
            raise InputError(f"{test_source.path}: test inputs of shape {test.item_shape}, the model takes {shape}")
    images = len(full) + (len(test) if test is not None else 0)
    decoded_mb = images * stored_bytes(view, first) / MB
    in_memory = decoded_mb <= cache_mb
    workers = full.workers
    if in_memory:
        where = (os.fspath(path), repr(view), tuple(input_shape))
        full = _in_memory(full, ("train", *where, indices.tobytes()))
        test = None if test is None else _in_memory(test, ("test", *where, test.indices.tobytes()))
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, round(validation_fraction * len(full))), len(full) - 1)
    train, val = full.subset(order[n_val:].sort().values), full.subset(order[:n_val].sort().values)
    train.info = {"skipped": source.skipped + (test_source.skipped if test_source else 0),
                  "decoded_mb": round(decoded_mb, 1), "cache_mb": cache_mb,
                  "val_images": len(val), "test_images": 0 if test is None else len(test)}
    if in_memory:
        train.info["decode_workers"] = workers
    return train, val, test, pre
