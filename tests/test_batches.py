"""In-memory batches: sampling that does not follow the storage order, and CIFAR-style crops."""

from __future__ import annotations

import numpy as np
import torch

from acc.data.images import ImageData
from acc.data.preprocess import Preprocess
from acc.data.augment import random_crop_flip
from acc.data.tensor_data import TensorData


def class_ordered(n_per_class=50, classes=10) -> TensorData:
    """Stored class by class, as CIFAR packs and image folders often are."""
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return TensorData(torch.randn(len(labels), 3, 8, 8), labels)


def test_sample_draws_from_every_class_not_the_head():
    data = class_ordered()
    sample = data.sample(100, seed=3)
    assert len(sample) == 100
    assert (torch.bincount(sample.labels, minlength=10) > 0).all()
    assert torch.equal(sample.inputs, data.sample(100, seed=3).inputs)  # seeded
    assert not torch.equal(sample.inputs, data.sample(100, seed=4).inputs)
    assert data.sample(10_000) is data


def test_crop_border_is_black_in_normalised_space():
    pre = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), size=(8, 8))
    raw = ImageData(np.full((4, 8, 8, 3), 255, np.uint8), np.zeros(4, np.int64))
    data = TensorData.from_images(raw, pre)
    assert data.inputs.dtype == torch.uint8  # normalised per batch
    black = -torch.tensor(pre.mean) / torch.tensor(pre.std)
    generator = torch.Generator().manual_seed(0)
    crops = torch.cat([x for _ in range(8) for x, _ in data.batches(4, augment=True, generator=generator)])
    white = (1 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    values = crops.permute(1, 0, 2, 3).reshape(3, -1)
    for c in range(3):
        is_black = torch.isclose(values[c], black[c])
        assert (is_black | torch.isclose(values[c], white[c])).all()
        assert is_black.any()  # some border was cropped in


def test_float_inputs_crop_with_zero_border():
    data = TensorData(torch.ones(4, 3, 8, 8), None)
    generator = torch.Generator().manual_seed(0)
    crops = torch.cat([x for _ in range(8) for x, _ in data.batches(4, augment=True, generator=generator)])
    assert set(crops.unique().tolist()) == {0.0, 1.0}
    pad = torch.full((3,), -2.0)
    assert set(random_crop_flip(data.inputs, generator, pad_value=pad).unique().tolist()) <= {-2.0, 1.0}
