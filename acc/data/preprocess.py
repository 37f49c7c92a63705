"""How raw images become model inputs: size, mean/std, layout.

Options given by the caller win over `<model>.preprocess.json` beside the model (for model.onnx:
model.preprocess.json), which wins over the defaults (scale to [0, 1], no normalisation, NCHW).
Mean and std are on the [0, 1] pixel scale; values above 1 are read as the 0-255 scale
(Caffe-style 123.68...) and divided by 255. `augment` names the augmentation preset
(acc.data.augment: cifar, imagenet, resize, none); None leaves the choice to the model's size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from acc.errors import InputError

LAYOUTS = ("NCHW", "NHWC")
AUGMENT_PRESETS = ("cifar", "imagenet", "resize", "none")
FIELDS = ("mean", "std", "size", "layout", "augment")


@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    size: tuple[int, int] | None = None  # (height, width); None keeps the data's own size
    layout: str = "NCHW"
    augment: str | None = None  # an AUGMENT_PRESETS name; None: chosen from the size (acc.data.augment)

    def __post_init__(self):
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if max(mean, default=0.0) > 1.0 or max(std, default=0.0) > 1.0:
            mean, std = tuple(v / 255.0 for v in mean), tuple(v / 255.0 for v in std)
        if len(mean) != len(std) or not mean:
            raise InputError(f"preprocessing: mean {self.mean} and std {self.std} need one value per channel")
        if any(v <= 0 for v in std):
            raise InputError(f"preprocessing: std must be positive, got {self.std}")
        if self.layout not in LAYOUTS:
            raise InputError(f"preprocessing: layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.augment is not None and self.augment not in AUGMENT_PRESETS:
            raise InputError(f"preprocessing: augment must be one of {', '.join(AUGMENT_PRESETS)}, got {self.augment!r}")
        size = None
        if self.size is not None:
            size = tuple(int(v) for v in self.size)
            if len(size) != 2 or min(size) <= 0:
                raise InputError(f"preprocessing: size must be [height, width], got {self.size}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "size", size)

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "size": None if self.size is None else list(self.size),
                "layout": self.layout, "augment": self.augment}


def sidecar_path(model_path: str | os.PathLike) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".preprocess.json")


def read_preprocess_json(path: str | os.PathLike) -> dict:
    """The fields of a preprocess JSON that Preprocess knows (others, e.g. class names, ignored)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable preprocessing JSON ({error})") from None
    if not isinstance(content, dict):
        raise InputError(f"{path}: preprocessing JSON must be an object")
    return {key: content[key] for key in FIELDS if content.get(key) is not None}


def resolve_preprocess(model_path: str | os.PathLike | None = None, **options) -> Preprocess:
    """Defaults, then the JSON beside the model if there is one, then the options that are not None."""
    fields: dict = {}
    if model_path is not None and sidecar_path(model_path).is_file():
        fields.update(read_preprocess_json(sidecar_path(model_path)))
    fields.update({key: value for key, value in options.items() if value is not None})
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown preprocessing options: {sorted(unknown)}")
    return replace(Preprocess(), **fields)


def resize_images(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 NHWC images resized (bilinear) to (height, width); unchanged when they already fit."""
    if size is None or images.shape[1:3] == tuple(size):
        return images
    return np.stack([resize_image(image, size) for image in images])


def resize_image(image: np.ndarray, size: tuple[int, int] | None, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """One uint8 HWC image resized (bilinear) to (height, width), from the region `box` (left,
    top, right, bottom) when given; unchanged when it already fits and there is no box."""
    if size is None or (box is None and image.shape[:2] == tuple(size)):
        return image
    height, width = size
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    array = np.asarray(pil.resize((width, height), Image.BILINEAR, box=box), dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array
