"""In-memory batches for pruning and fine-tuning: the whole (small) dataset as one float tensor,
CIFAR augmentation applied per batch with vectorised tensor ops (no per-image Python work).

The crop pads with black pixels, as the usual CIFAR recipe does (RandomCrop on the raw image, then
Normalize): in normalised space black is -mean/std, not 0. The trained model's BatchNorm statistics
were gathered on such borders, and fine-tuning or re-estimating them on other borders shifts them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from acc.data.images import ImageData
from acc.data.preprocess import Preprocess
from acc.errors import InputError

CROP_PADDING = 4


@dataclass
class TensorData:
    inputs: torch.Tensor  # float32 NCHW (or NHWC when the model wants it), preprocessed
    labels: torch.Tensor | None  # int64 [N] or None
    pad_value: torch.Tensor | None = None  # per-channel value of a black pixel; None pads with 0

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @classmethod
    def from_images(cls, data: ImageData, pre: Preprocess) -> "TensorData":
        if len(data) == 0:
            raise InputError(f"{data.source or 'dataset'}: no inputs")
        if data.is_raw_images:
            x = torch.from_numpy(np.ascontiguousarray(data.inputs)).permute(0, 3, 1, 2).float() / 255.0
            mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
            std = torch.tensor(pre.std).view(1, -1, 1, 1)
            if mean.shape[1] not in (1, x.shape[1]):
                raise InputError(f"{data.source}: {x.shape[1]} channels but mean/std give {mean.shape[1]} values")
            x = (x - mean) / std
            black = (-mean / std).view(-1).expand(x.shape[1]).clone()
        else:
            x = torch.from_numpy(np.ascontiguousarray(data.inputs)).float()
            black = None
        labels = None if data.labels is None else torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
        return cls(x.contiguous(), labels, black)

    def to(self, device) -> "TensorData":
        return TensorData(self.inputs.to(device), None if self.labels is None else self.labels.to(device),
                          None if self.pad_value is None else self.pad_value.to(device))

    def subset(self, indices) -> "TensorData":
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.inputs.device)
        return TensorData(self.inputs[idx], None if self.labels is None else self.labels[idx], self.pad_value)

    def sample(self, count: int, seed: int = 0) -> "TensorData":
        """A seeded random `count` of the rows (all of them when there are fewer). Never the first
        `count`: datasets are often stored class by class, and a head would hold a few classes."""
        if count >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count]
        return self.subset(order.sort().values)

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False, generator: torch.Generator | None = None):
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size].to(self.inputs.device)
            x = self.inputs[idx]
            if augment and x.dim() == 4:
                x = random_crop_flip(x, generator, pad_value=self.pad_value)
            yield x, (None if self.labels is None else self.labels[idx])


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = CROP_PADDING,
                     pad_value: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image random crop of the padded batch back to its size, and random horizontal flip.
    The border is `pad_value` per channel (layout NCHW), or 0."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    if pad_value is not None and c == pad_value.numel():
        border = torch.ones(1, 1, h + 2 * padding, w + 2 * padding, dtype=x.dtype, device=x.device)
        border[..., padding:padding + h, padding:padding + w] = 0
        padded = padded + border * pad_value.to(x.dtype).view(1, c, 1, 1)
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    out = torch.gather(padded, 2, _rows_index(top, h, padded))
    out = torch.gather(out, 3, _cols_index(left, w, out))
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    out[flip] = out[flip].flip(-1)
    return out


def _rows_index(top: torch.Tensor, h: int, padded: torch.Tensor) -> torch.Tensor:
    b, c, _, pw = padded.shape
    rows = top[:, None] + torch.arange(h, device=top.device)[None, :]
    return rows[:, None, :, None].expand(b, c, h, pw)


def _cols_index(left: torch.Tensor, w: int, x: torch.Tensor) -> torch.Tensor:
    b, c, h, _ = x.shape
    cols = left[:, None] + torch.arange(w, device=left.device)[None, :]
    return cols[:, None, None, :].expand(b, c, h, w)
