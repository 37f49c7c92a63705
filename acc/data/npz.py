"""One array of an .npz without reading the others: memory-mapped when the archive stores it
uncompressed (np.savez), read into memory when it is deflated (np.savez_compressed)."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


def member_names(path: Path) -> list[str]:
    """The array names an .npz holds."""
    with zipfile.ZipFile(path) as archive:
        return [name[:-4] for name in archive.namelist() if name.endswith(".npy")]


def memory_map(path: Path, key: str) -> np.ndarray | None:
    """Array `key` of the .npz mapped read-only from the file, or None when it is compressed
    (or holds Python objects)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(LOCAL_HEADER)
        if header[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        handle.seek(info.header_offset + LOCAL_HEADER + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
        offset = handle.tell()
    if dtype.hasobject or 0 in shape:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def read_member(path: Path, key: str) -> np.ndarray:
    """Array `key` of the .npz: mapped when stored uncompressed, else read."""
    mapped = memory_map(path, key)
    if mapped is not None:
        return mapped
    with np.load(path, allow_pickle=False) as archive:
        return archive[key]
