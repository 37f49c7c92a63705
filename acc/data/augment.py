"""Augmentation presets, and `View`: how a stored item becomes a model input.

Presets (`--augment`, or "augment" in MODEL.preprocess.json; default `resize` when the data has
no labels (acc.data.splits), else `cifar` for models whose input is at most 64 px, `imagenet` above):
- `cifar`: training pads 4 black pixels on every side, crops the model's size at a random place
  and flips left-right with probability 1/2; evaluation resizes to the model's size (nothing to
  do on CIFAR itself).
- `imagenet`: training crops 8-100 % of the image's area at an aspect ratio in [3/4, 4/3]
  (RandomResizedCrop: 10 tries, then the central crop), resizes it to the model's size and flips;
  evaluation resizes the image to cover size / 0.875 and takes the central crop of the model's size.
- `resize`: no geometry change at all: every image resized to the model's size (aspect not kept),
  in training too. For detectors and segmenters, whose outputs depend on positions.
- `none`: nothing: the images must already have the model's size (any other size is an error).

Parameters are drawn in the calling (main) process from the batch generator, per global batch,
one row per item, and applied per item (streaming: in the DataLoader workers, `View.item`) or
vectorised over a batch (in memory: `View.batch`), so both paths see the same numbers.
`cifar` draws top = randint(0, 9, (b,)), left = randint(0, 9, (b,)), flip = rand(b) < 0.5, in
that order (as the in-memory crops always did); `imagenet` draws area fractions (b, 10), log
aspect ratios (b, 10), the crop's top and left as fractions of the free room (b, 2), then flip.

What the in-memory path stores (`View.store`): raw images as uint8 CHW, normalised per batch
after the crop (bitwise the values of normalising first and padding with -mean/std: the border
is black); model-ready float arrays as they are (their crop pads with 0). For `cifar`, `resize`
and `none` that is the image at the model's size, and streaming gives exactly the in-memory
batches. For `imagenet` it is the evaluation view before its final crop (size / 0.875, e.g. 256
for 224; 1.3x the pixels): evaluation batches are exactly the streamed ones, while training crops
come from that cache by bilinear sampling instead of from the full-resolution file: the same
parameters over the central 87.5 % of the image, at a lower resolution. Only streaming crops the
original file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from acc.data.preprocess import AUGMENT_PRESETS, Preprocess, resize_image
from acc.errors import InputError

PRESETS = AUGMENT_PRESETS
SMALL_INPUT = 64  # largest side (px) that defaults to the cifar preset
CROP_PADDING = 4
EVAL_COVER = 0.875  # imagenet evaluation: the central crop covers this share of the resized image
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10


def default_preset(size: tuple[int, int] | None) -> str:
    return "cifar" if size is None or max(size) <= SMALL_INPUT else "imagenet"


# -- cifar: pad, crop, flip ------------------------------------------------------------------------

def draw_crop_flip(b: int, generator: torch.Generator | None = None, padding: int = CROP_PADDING) -> torch.Tensor:
    """(b, 3) int64 rows: top, left, flip."""
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.stack([top, left, flip.long()], 1)


def crop_flip(x: torch.Tensor, params: torch.Tensor, padding: int = CROP_PADDING,
              pad_value: torch.Tensor | None = None) -> torch.Tensor:
    """Each NCHW image padded (with 0, or `pad_value` per channel), cropped back to its size at
    (top, left) and flipped left-right where flip is set."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    if pad_value is not None and c == pad_value.numel():
        border = torch.ones(1, 1, h + 2 * padding, w + 2 * padding, dtype=x.dtype, device=x.device)
        border[..., padding:padding + h, padding:padding + w] = 0
        padded = padded + border * pad_value.to(x.dtype).view(1, c, 1, 1)
    params = params.to(x.device)
    rows = (params[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, padded.shape[3])
    out = torch.gather(padded, 2, rows)
    cols = (params[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    out = torch.gather(out, 3, cols)
    flip = params[:, 2].bool().view(b, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = CROP_PADDING,
                     pad_value: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image random crop of the padded batch back to its size, and random horizontal flip."""
    return crop_flip(x, draw_crop_flip(len(x), generator, padding), padding, pad_value)


# -- imagenet: random resized crop, flip; cover-resize and central crop -----------------------------

def draw_resized_crop(b: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(b, 2 * ATTEMPTS + 3) float64 rows: area fractions, log aspect ratios, top, left, flip."""
    area = torch.rand(b, ATTEMPTS, generator=generator, dtype=torch.float64) * (SCALE[1] - SCALE[0]) + SCALE[0]
    low, high = math.log(RATIO[0]), math.log(RATIO[1])
    log_ratio = torch.rand(b, ATTEMPTS, generator=generator, dtype=torch.float64) * (high - low) + low
    where = torch.rand(b, 2, generator=generator, dtype=torch.float64)
    flip = (torch.rand(b, generator=generator) < 0.5).double()
    return torch.cat([area, log_ratio, where, flip[:, None]], 1)


def crop_boxes(params: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """(top, left, crop height, crop width) per row, in an image of `height` x `width`: the first
    try that fits, else the central crop at the nearest allowed aspect ratio (as torchvision)."""
    params = params.double().cpu()
    area = params[:, :ATTEMPTS] * (height * width)
    ratio = params[:, ATTEMPTS:2 * ATTEMPTS].exp()
    w = (area * ratio).sqrt().round().long()
    h = (area / ratio).sqrt().round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)
    found = fits.any(1)
    if width / height < RATIO[0]:
        fallback = (round(width / RATIO[0]), width)
    elif width / height > RATIO[1]:
        fallback = (height, round(height * RATIO[1]))
    else:
        fallback = (height, width)
    ch = torch.where(found, h.gather(1, first)[:, 0], fallback[0])
    cw = torch.where(found, w.gather(1, first)[:, 0], fallback[1])
    u_top, u_left = params[:, 2 * ATTEMPTS], params[:, 2 * ATTEMPTS + 1]
    top = torch.where(found, (u_top * (height - ch + 1)).floor().long(), (height - ch) // 2)
    left = torch.where(found, (u_left * (width - cw + 1)).floor().long(), (width - cw) // 2)
    return top, left, ch, cw


def resized_crop_flip(x: torch.Tensor, params: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each NCHW image's box (crop_boxes) resampled (bilinear) to `size`, mirrored where flip is set.
    Float out (pixel values kept: 0..255 for raw images)."""
    b, _, height, width = x.shape
    top, left, ch, cw = (v.double() for v in crop_boxes(params, height, width))
    sign = 1.0 - 2.0 * params[:, -1].double().cpu()
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sign * cw / width
    theta[:, 0, 2] = (2 * left + cw) / width - 1
    theta[:, 1, 1] = ch / height
    theta[:, 1, 2] = (2 * top + ch) / height - 1
    grid = F.affine_grid(theta.float().to(x.device), [b, x.shape[1], *size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    height, width = x.shape[-2:]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


def cover_size(size: tuple[int, int]) -> tuple[int, int]:
    """The imagenet evaluation resize: the model's size / 0.875 (224 -> 256)."""
    return round(size[0] / EVAL_COVER), round(size[1] / EVAL_COVER)


def cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image scaled (aspect kept) to cover `size`, its central part of that size (one resampling)."""
    height, width = image.shape[:2]
    scale = max(size[0] / height, size[1] / width)
    box_h, box_w = size[0] / scale, size[1] / scale
    top, left = (height - box_h) / 2, (width - box_w) / 2
    return resize_image(image, size, box=(left, top, left + box_w, top + box_h))


# -- View --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    """How stored items become model inputs: the preset, the model's size, the normalisation of
    raw images ((x / 255 - mean) / std) and the layout. Picklable: DataLoader workers hold one."""

    preset: str = "cifar"
    size: tuple[int, int] | None = None  # the model's (height, width)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    raw: bool = False  # uint8 images (normalised here) or model-ready float arrays

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise InputError(f"--augment must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.preset == "imagenet" and self.size is None:
            raise InputError("--augment imagenet needs the model's input size (height, width)")

    @classmethod
    def for_data(cls, pre: Preprocess, raw: bool) -> "View":
        preset = pre.augment or default_preset(pre.size)
        return cls(preset, pre.size, pre.mean, pre.std, pre.layout, raw)

    @property
    def augments(self) -> bool:
        """Whether training batches differ from evaluation ones."""
        return self.preset in ("cifar", "imagenet")

    @property
    def stored_size(self) -> tuple[int, int] | None:
        """(height, width) of a stored raw image."""
        return cover_size(self.size) if self.preset == "imagenet" and self.raw else self.size

    def draw(self, b: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """The augmentation parameters of a batch of b (None: this preset does not augment)."""
        if self.preset == "cifar":
            return draw_crop_flip(b, generator)
        if self.preset == "imagenet":
            return draw_resized_crop(b, generator)
        return None

    def check_channels(self, channels: int, source: str) -> None:
        if self.raw and len(self.mean) not in (1, channels):
            raise InputError(f"{source}: {channels} channels but mean/std give {len(self.mean)} values")

    def store(self, item: np.ndarray, name: str) -> torch.Tensor:
        """One item as stored: a raw HWC image as uint8 CHW at `stored_size`; a float array as
        float32 (CHW when it is an image in the NHWC layout)."""
        if not self.raw:
            x = torch.from_numpy(np.array(item, dtype=np.float32))
            return x.permute(2, 0, 1) if self.layout == "NHWC" and x.dim() == 3 else x
        if self.preset == "imagenet":
            item = cover(item, self.stored_size)
        elif self.preset == "none" and self.size is not None and item.shape[:2] != tuple(self.size):
            raise InputError(f"{name}: image is {item.shape[0]}x{item.shape[1]}, the model takes "
                             f"{self.size[0]}x{self.size[1]} (--augment none does not resize; resize does)")
        else:
            item = resize_image(item, self.size)
        return torch.from_numpy(np.array(item, dtype=np.uint8)).permute(2, 0, 1)

    def batch(self, stored: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """Stored items [N, ...] -> model inputs: augmented with `params` (one row per item) or
        the evaluation view, normalised, laid out."""
        x = stored
        if x.dim() == 4 and self.preset == "cifar" and params is not None:
            x = crop_flip(x, params)
        elif x.dim() == 4 and self.preset == "imagenet":
            x = resized_crop_flip(x, params, self.size) if params is not None else center_crop(x, self.size)
        return self.finish(x)

    def item(self, item: np.ndarray, params: torch.Tensor | None, name: str) -> torch.Tensor:
        """One item -> its model input (a DataLoader worker's work). imagenet training crops the
        file's own pixels; everything else goes through `store` and `batch`, as in memory."""
        if self.preset == "imagenet" and self.raw and params is not None:
            top, left, ch, cw = (int(v) for v in crop_boxes(params[None], *item.shape[:2]))
            image = resize_image(item, self.size, box=(left, top, left + cw, top + ch))
            if params[-1]:
                image = image[:, ::-1]
            return self.finish(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None])[0]
        return self.batch(self.store(item, name)[None], None if params is None else params[None])[0]

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise raw pixel values (uint8, or float 0..255 after resampling) and lay out."""
        if self.raw:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = (x.float() / 255.0 - mean) / std
        if self.layout == "NHWC" and x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return x.contiguous()
