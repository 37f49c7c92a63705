"""Streaming batches: items decoded, resized, augmented and normalised in DataLoader workers, so
memory stays bounded (a few batches in flight) whatever the dataset's size.

`StreamData` has TensorData's interface. The main process plans each global batch (order and
augmentation parameters, acc.data.shard) and passes keys (index, mode, parameters) through the
DataLoader's batch_sampler; a worker turns a key into a model input with the same `View` the
in-memory path uses. A decode error in a worker comes back as a `Failed` item, which the collate
function passes through and the main process raises as one InputError line naming the file
(torch's multi-line worker traceback never reaches the user). Each iteration starts its own pool
of workers (forked: cheap) and ends it, so only the loader being read holds worker processes:
memory stays that of the main process plus one pool, however many data objects (train,
validation, samples, ranks' shards) exist.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from acc.data.augment import View
from acc.data.images import Source
from acc.data.shard import plan_batches
from acc.data.tensor_data import TensorData
from acc.errors import InputError

DECODE_BATCH = 256  # items per batch when decoding into memory


def default_workers() -> int:
    """Loader processes when not told: up to 4, leaving a core to the training process."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class Failed:
    """An item (or batch) that could not be made; `message` names the file."""

    def __init__(self, message: str):
        self.message = message


class Items(Dataset):
    """Key (source index, mode, parameters or None) -> (tensor, label or -1), or Failed.
    Modes: "store" (what in_memory keeps), "eval" (model input), "train" (augmented model input)."""

    def __init__(self, source: Source, view: View):
        self.source = source
        self.view = view

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        index, mode, params = key
        try:
            item = self.source.read(index)
            name = self.source.name(index)
            if mode == "store":
                x = self.view.store(item, name)
            else:
                x = self.view.item(item, None if params is None else torch.tensor(params), name)
        except InputError as error:
            return Failed(str(error))
        label = -1 if self.source.labels is None else int(self.source.labels[index])
        return x, label

    def collate(self, items):
        for item in items:
            if isinstance(item, Failed):
                return item
        shapes = {tuple(x.shape) for x, _ in items}
        if len(shapes) > 1:
            return Failed(f"{self.source.path}: images differ in size {sorted(shapes)[:3]}; give a preprocessing size to resize them")
        return torch.stack([x for x, _ in items]), torch.tensor([label for _, label in items], dtype=torch.int64)


class Keys:
    """The DataLoader's batch_sampler: the key lists of the plan set before each iteration."""

    def __init__(self, plan=()):
        self.plan = plan

    def __iter__(self):
        return iter(self.plan)


class StreamData:
    """The items `indices` of `source` (all by default), streamed through `workers` processes."""

    def __init__(self, source: Source, view: View, indices=None, *, workers: int | None = None,
                 device: str | torch.device = "cpu", info: dict | None = None):
        self.source = source
        self.view = view
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise InputError(f"--workers must be 0 or more, got {self.workers}")
        self.device = torch.device(device)
        self.labels = None if source.labels is None else torch.from_numpy(source.labels[self.indices]).to(self.device)
        self.info = dict(info or {})
        self._items = Items(source, view)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def _derived(self, indices=None, device=None) -> "StreamData":
        return StreamData(self.source, self.view, self.indices if indices is None else indices, workers=self.workers,
                          device=self.device if device is None else device, info=self.info)

    def to(self, device) -> "StreamData":
        return self._derived(device=device)

    def subset(self, indices) -> "StreamData":
        picked = torch.as_tensor(indices, dtype=torch.long).cpu().numpy()
        return self._derived(indices=self.indices[picked])

    def sample(self, count: int, seed: int = 0) -> "StreamData":
        """A seeded random `count` of the items (all of them when there are fewer), as TensorData.sample."""
        if count >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count]
        return self.subset(order.sort().values)

    @property
    def item_shape(self) -> tuple[int, ...]:
        """One model input's shape (no batch dimension), from the first item decoded here."""
        index = int(self.indices[0])
        return tuple(self.view.item(self.source.read(index), None, self.source.name(index)).shape)

    def describe(self) -> dict:
        return {"path": "stream", "workers": self.workers, "augment": self.view.preset, "images": len(self), **self.info}

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, shard: tuple[int, int] | None = None):
        """(x, y or None) per batch, on the data's device; see acc.data.shard for `shard`."""
        draw = self.view.draw if augment else None
        plan = plan_batches(len(self), batch_size, shuffle=shuffle, draw=draw, generator=generator, shard=shard)
        mode = "train" if augment and self.view.augments else "eval"
        keys = (self._keys(idx, params, mode) for idx, params in plan)
        for x, y in self._run(keys):
            yield x.to(self.device, non_blocking=True), (None if self.labels is None else y.to(self.device, non_blocking=True))

    def in_memory(self) -> TensorData:
        """The items decoded (not augmented) into a TensorData on this data's device."""
        keys = (self._keys(torch.arange(start, min(start + DECODE_BATCH, len(self))), None, "store")
                for start in range(0, len(self), DECODE_BATCH))
        if len(self) == 0:
            raise InputError(f"{self.source.path}: no items to load")
        inputs, start = None, 0
        for x, _ in self._run(keys):
            if inputs is None:
                inputs = torch.empty((len(self), *x.shape[1:]), dtype=x.dtype)
            elif x.shape[1:] != inputs.shape[1:]:
                raise InputError(f"{self.source.path}: images differ in size; give a preprocessing size to resize them")
            inputs[start:start + len(x)] = x
            start += len(x)
        return TensorData(inputs.to(self.device), self.labels, self.view, dict(self.info))

    def _keys(self, idx: torch.Tensor, params: torch.Tensor | None, mode: str) -> list:
        sources = self.indices[idx.numpy()].tolist()
        rows = [None] * len(sources) if params is None else params.tolist()
        return [(i, mode, row) for i, row in zip(sources, rows)]

    def _run(self, keys):
        """Collated batches of the key lists `keys` (on the CPU, pinned for a GPU); a Failed one is raised."""
        # A private generator: the loader's worker seeds would otherwise be drawn from torch's global
        # one, and a streamed run would then draw other dropout masks than an in-memory one.
        loader = DataLoader(self._items, batch_sampler=Keys(keys), num_workers=self.workers, collate_fn=self._items.collate,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(0))
        for batch in loader:
            if isinstance(batch, Failed):
                raise InputError(batch.message)
            yield batch
