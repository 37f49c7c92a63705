"""Datasets for pruning and fine-tuning: readers (packed JPEG, image folders, arrays), the
preprocessing a model expects, and torch Datasets with CIFAR augmentation and a validation split.

The readers and preprocessing use numpy and Pillow only; torch is imported by torch_data.
"""

from acc.data.images import ImageData
from acc.data.loader import load_dataset
from acc.data.preprocess import Preprocess, resolve_preprocess, sidecar_path

__all__ = ["ImageData", "Preprocess", "load_dataset", "resolve_preprocess", "sidecar_path"]
