"""Torch side: a Dataset that preprocesses (and for training augments) ImageData, loaders, and a
seeded validation split.

Augmentation is the standard CIFAR one: pad 4 on each side (black for raw images, zero for float
inputs), take a random crop of the original size, flip left-right with probability 1/2. Draws
come from torch's global generator (seed it for repeatable runs); loaders shuffle with their own
seeded generator.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from acc.data.images import ImageData
from acc.data.preprocess import Preprocess
from acc.errors import InputError

CROP_PADDING = 4


def random_crop_flip(image: torch.Tensor, padding: int = CROP_PADDING) -> torch.Tensor:
    """Random crop of a zero-padded CHW image back to its size, then a random horizontal flip."""
    _, height, width = image.shape
    padded = torch.nn.functional.pad(image, (padding, padding, padding, padding))
    top, left = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,)))
    crop = padded[:, top : top + height, left : left + width]
    return crop.flip(-1) if torch.rand(()) < 0.5 else crop


class ImageDataset(Dataset):
    """Yields (input, label) when the data has labels, the input alone otherwise."""

    def __init__(self, data: ImageData, preprocess: Preprocess, *, augment: bool = False):
        self.data = data
        self.preprocess = preprocess
        self.augment = augment
        channels = data.inputs.shape[-1] if data.is_raw_images else self.chw(0).shape[0]
        if len(preprocess.mean) not in (1, channels):
            raise InputError(f"{data.source}: {channels} channels but mean/std give {len(preprocess.mean)} values")
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32).view(-1, 1, 1)

    @property
    def has_labels(self) -> bool:
        return self.data.labels is not None

    def __len__(self) -> int:
        return len(self.data)

    def chw(self, index: int) -> torch.Tensor:
        """Input `index` as a CHW tensor: uint8 for raw images, float otherwise."""
        array = torch.from_numpy(np.ascontiguousarray(self.data.inputs[index]))
        if self.data.is_raw_images or self.preprocess.layout == "NHWC":
            return array.permute(2, 0, 1)
        return array

    def model_input(self, image: torch.Tensor) -> torch.Tensor:
        if self.data.is_raw_images:
            image = (image.float() / 255.0 - self.mean) / self.std
        return image.permute(1, 2, 0).contiguous() if self.preprocess.layout == "NHWC" else image.contiguous()

    def __getitem__(self, index: int):
        image = self.chw(index)
        if self.augment:
            image = random_crop_flip(image)
        image = self.model_input(image)
        if self.has_labels:
            return image, int(self.data.labels[index])
        return image


def split_validation(data: ImageData, fraction: float = 0.1, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Hold out a seeded random `fraction` of the data (at least one item) for validation."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"validation fraction must be in (0, 1), got {fraction}")
    if len(data) < 2:
        raise InputError(f"{data.source}: needs at least 2 items to split off a validation set")
    order = np.random.default_rng(seed).permutation(len(data))
    held_out = min(max(1, round(fraction * len(data))), len(data) - 1)
    return data.subset(np.sort(order[held_out:])), data.subset(np.sort(order[:held_out]))


def training_datasets(
    data: ImageData, preprocess: Preprocess, *, validation_fraction: float = 0.1, seed: int = 0, augment: bool = True
) -> tuple[ImageDataset, ImageDataset]:
    """Augmented training set and plain validation set carved from one training split."""
    train, validation = split_validation(data, validation_fraction, seed)
    return ImageDataset(train, preprocess, augment=augment), ImageDataset(validation, preprocess)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, num_workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers, drop_last=False)
