"""The packed image format of ../shared/datasets/cifar10: one .npz of JPEG bytes.

Arrays: `jpeg` uint8 (all files' bytes end to end), `offsets` int64 [N+1] (image i is
jpeg[offsets[i]:offsets[i+1]]), `labels` uint8 [N], `classes` str [K]. A SHA256SUMS file beside
the pack, when asked for, is checked before reading. `PackSource` keeps the bytes compressed and
decodes one image at a time.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from acc.atomic import atomic_path
from acc.data.images import ImageData, Source, check_labels, sample_indices
from acc.data.npz import member_names, read_member
from acc.errors import InputError

PACK_KEYS = ("jpeg", "offsets", "labels", "classes")


def is_pack(path: Path) -> bool:
    """True when `path` is an .npz holding the pack's arrays."""
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {"jpeg", "offsets"} <= set(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return False


def verify_sha256(path: Path) -> None:
    """Compare the pack's digest with its line in SHA256SUMS beside it."""
    sums = path.parent / "SHA256SUMS"
    if not sums.is_file():
        raise InputError(f"{path}: no SHA256SUMS beside it to check against")
    expected = None
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == path.name:
            expected = parts[0].lower()
    if expected is None:
        raise InputError(f"{path}: not listed in {sums}")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise InputError(f"{path}: SHA256 mismatch (file damaged or replaced)")


def read_pack_arrays(path: str | os.PathLike, *, check_sha256: bool = False) -> dict[str, np.ndarray]:
    """The pack's raw arrays (JPEG bytes not decoded, memory-mapped when stored uncompressed),
    checked for consistency."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset file not found: {path}")
    if check_sha256:
        verify_sha256(path)
    try:
        names = member_names(path)
        missing = [key for key in ("jpeg", "offsets") if key not in names]
        if missing:
            raise InputError(f"{path}: not an image pack (missing arrays: {', '.join(missing)})")
        arrays = {key: read_member(path, key) for key in PACK_KEYS if key in names}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(f"{path}: unreadable npz ({error})") from None
    offsets = np.asarray(arrays["offsets"], dtype=np.int64)
    arrays["offsets"] = offsets
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(arrays["jpeg"]) or np.any(np.diff(offsets) <= 0):
        raise InputError(f"{path}: offsets do not partition the JPEG bytes")
    return arrays


def decode_jpeg(data: bytes, source: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"{source}: undecodable image ({error})") from None


class PackSource(Source):
    """A pack opened: the compressed bytes (10-20x smaller than the decoded images) stay as they
    are, and `read(i)` decodes image i alone."""

    def __init__(self, path: str | os.PathLike, *, check_sha256: bool = False):
        arrays = read_pack_arrays(path, check_sha256=check_sha256)
        self.path = str(path)
        self.jpeg, self.offsets = arrays["jpeg"], arrays["offsets"]
        self.classes = tuple(str(name) for name in arrays["classes"]) if "classes" in arrays else None
        if "labels" in arrays:
            self.labels = check_labels(arrays["labels"], len(self), len(self.classes) if self.classes else None, self.path)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def read(self, index: int) -> np.ndarray:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return decode_jpeg(self.jpeg[start:stop].tobytes(), self.name(index))


def read_pack(
    path: str | os.PathLike,
    *,
    check_sha256: bool = False,
    indices=None,
    limit: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Decode a pack to uint8 NHWC images: all, those at `indices`, or a seeded random `limit`."""
    source = PackSource(path, check_sha256=check_sha256)
    count = len(source)
    chosen = sample_indices(count, limit, seed) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(chosen) and (chosen.min() < 0 or chosen.max() >= count):
        raise InputError(f"{path}: image index out of range (pack holds {count})")
    return source.decode(chosen)


def write_pack(path: str | os.PathLike, images_jpeg_bytes, labels, classes) -> Path:
    """Write JPEG files' bytes (kept as they are) with labels and class names as a pack, atomically."""
    blobs = [bytes(blob) for blob in images_jpeg_bytes]
    if not blobs:
        raise InputError("write_pack: no images given")
    classes = np.asarray(list(classes), dtype=str)
    labels = check_labels(labels, len(blobs), len(classes), "write_pack")
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(blob) for blob in blobs])
    jpeg = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    dtype = np.uint8 if len(classes) <= 256 else np.int64
    with atomic_path(path) as tmp:
        # np.savez adds ".npz" to names without it: write through a handle to keep the temp name.
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, jpeg=jpeg, offsets=offsets, labels=labels.astype(dtype), classes=classes)
    return Path(path)
