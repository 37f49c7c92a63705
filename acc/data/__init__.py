"""Datasets for pruning and fine-tuning.

- readers that open a dataset without decoding it (`sources.open_source`: cifar_pack, folder,
  arrays) and `load_dataset`, which decodes one into memory;
- the preprocessing a model expects (preprocess) and the augmentation presets (augment);
- the two data objects the training loops take, with one interface: `tensor_data.TensorData`
  (in memory) and `stream.StreamData` (DataLoader workers), batches planned and sharded by
  `shard`; `splits.open_splits` picks one by size.

The readers and preprocessing use numpy and Pillow only; torch is imported by augment, shard,
tensor_data, stream and splits.
"""

from acc.data.images import ImageData
from acc.data.loader import load_dataset
from acc.data.preprocess import Preprocess, resolve_preprocess, sidecar_path

__all__ = ["ImageData", "Preprocess", "load_dataset", "resolve_preprocess", "sidecar_path"]
