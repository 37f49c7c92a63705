"""The in-memory data the pruning loops train on, now in acc.data (tensor_data, augment); kept
importable from here."""

from acc.data.augment import CROP_PADDING, random_crop_flip
from acc.data.tensor_data import TensorData

__all__ = ["CROP_PADDING", "TensorData", "random_crop_flip"]
