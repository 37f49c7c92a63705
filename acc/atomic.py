"""Atomic output: write to a temp file in the destination folder, then rename over the target.

A killed run therefore leaves either the old file or the new one, never half of one. The temp
file gets the mode a plain `open(path, "w")` would give (0666 less the process umask: 0644 by
default), not mkstemp's private 0600, so a deployment running as another user can read the output.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from acc.errors import InputError


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early (before any work) when the output's folder does not exist."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output folder does not exist: {parent}")
    if out.is_dir():
        raise InputError(f"output path is a folder, expected a file: {out}")
    return out


def current_umask() -> int:
    """The process umask (read from /proc where it is shown, else set and restored at once)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, mode: int = 0o666) -> None:
    """Give `path` the mode a new file gets from open(): `mode` less the process umask."""
    os.chmod(path, mode & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; on success rename it to `path`, on failure remove it."""
    out = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    os.close(fd)
    try:
        apply_umask(tmp)
        yield Path(tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
