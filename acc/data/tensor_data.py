"""In-memory batches: the whole (small enough) dataset as one tensor, augmented per batch with
vectorised tensor ops (no per-image Python work).

Raw images are kept as uint8 (4x less memory than float32) and normalised per batch, after the
crop: padding with 0 then normalising gives the black border (-mean/std), as the usual CIFAR recipe
does (RandomCrop on the raw image, then Normalize). The trained model's BatchNorm statistics were
gathered on such borders, and fine-tuning or re-estimating them on other borders shifts them.

TensorData and acc.data.stream.StreamData implement one interface (len, labels, has_labels,
batches, sample, subset, to, in_memory, describe); see StreamData for the streamed twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from acc.data.augment import View
from acc.data.images import ImageData
from acc.data.preprocess import Preprocess
from acc.data.shard import plan_batches
from acc.errors import InputError


@dataclass
class TensorData:
    inputs: torch.Tensor  # stored items: uint8 NCHW raw images, or float32 model-ready inputs
    labels: torch.Tensor | None = None  # int64 [N] or None
    view: View = field(default_factory=View)  # how stored items become model inputs
    info: dict = field(default_factory=dict)  # how the data was loaded (describe())

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @classmethod
    def from_images(cls, data: ImageData, pre: Preprocess, view: View | None = None) -> "TensorData":
        if len(data) == 0:
            raise InputError(f"{data.source or 'dataset'}: no inputs")
        view = view or View.for_data(pre, data.is_raw_images)
        images = data.inputs
        if data.is_raw_images and view.preset != "imagenet" and images.shape[1:3] == tuple(view.size or images.shape[1:3]):
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        elif data.is_raw_images:
            x = torch.stack([view.store(image, f"{data.source}[{i}]") for i, image in enumerate(images)])
        else:
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            if view.layout == "NHWC" and x.dim() == 4:
                x = x.permute(0, 3, 1, 2).contiguous()
        if x.dim() == 4:
            view.check_channels(x.shape[1], data.source)
        labels = None if data.labels is None else torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
        return cls(x, labels, view)

    @property
    def item_shape(self) -> tuple[int, ...]:
        """One model input's shape (no batch dimension)."""
        return tuple(self.view.batch(self.inputs[:1]).shape[1:])

    def describe(self) -> dict:
        return {"path": "memory", "workers": 0, "augment": self.view.preset, "images": len(self), **self.info}

    def in_memory(self) -> "TensorData":
        """Already in memory: itself (StreamData.in_memory decodes into one of these)."""
        return self

    def to(self, device) -> "TensorData":
        return TensorData(self.inputs.to(device), None if self.labels is None else self.labels.to(device), self.view, self.info)

    def subset(self, indices) -> "TensorData":
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.inputs.device)
        return TensorData(self.inputs[idx], None if self.labels is None else self.labels[idx], self.view, self.info)

    def sample(self, count: int, seed: int = 0) -> "TensorData":
        """A seeded random `count` of the rows (all of them when there are fewer). Never the first
        `count`: datasets are often stored class by class, and a head would hold a few classes."""
        if count >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count]
        return self.subset(order.sort().values)

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, shard: tuple[int, int] | None = None):
        """(x, y or None) per batch, on the data's device; see acc.data.shard for `shard`."""
        draw = self.view.draw if augment and self.inputs.dim() == 4 else None
        for idx, params in plan_batches(len(self), batch_size, shuffle=shuffle, draw=draw, generator=generator, shard=shard):
            idx = idx.to(self.inputs.device)
            yield self.view.batch(self.inputs[idx], params), (None if self.labels is None else self.labels[idx])
