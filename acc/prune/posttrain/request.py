"""Which options `acc shrink` takes together (no torch: checked before anything is imported or read)."""

from __future__ import annotations

from acc.errors import InputError


def check_request(ratio, rate, data) -> None:
    """The option combinations of `acc shrink`, refused before anything is read."""
    if rate is not None and ratio is not None:
        raise InputError("--rate and --ratio are two modes of acc shrink: give one (--rate searches per-layer rates "
                         "and refits from --data; --ratio removes one fraction of every group)")
    if rate is not None and data is None:
        raise InputError("--rate needs --data (a few hundred calibration images, labels optional); the plain "
                         "--ratio and lossless modes need none")
    if data is not None and rate is None:
        raise InputError("--data is read only with --rate (post-training compression); --ratio and the lossless "
                         "mode need no data")
