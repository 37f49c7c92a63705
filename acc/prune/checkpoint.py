"""Checkpoints of long runs: written atomically, so a kill leaves the last good one."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from acc import atomic
from acc.errors import InputError


def save(path: str | os.PathLike, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def load(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no checkpoint to resume from: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:
        raise InputError(f"checkpoint {p} is unreadable ({type(err).__name__})") from None
