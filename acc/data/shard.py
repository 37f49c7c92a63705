"""How batches are drawn, the same for the in-memory and the streaming data: the order, the
augmentation parameters of each global batch, and each rank's slice of it.

Every rank of a multi-process run draws the same global batches from the same generator (so the
same order and the same augmentation parameters) and keeps the contiguous rows
`shard_rows(len(batch), rank, world)`: chunks of ceil(b / world) rows, the last rank's shorter.
A global batch that cannot give every rank a row (only ever the trailing one, unless the batch
size itself is too small to split) is drawn, then skipped by every rank, so all ranks see the
same number of batches and the generator ends an epoch where one process would leave it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from acc.errors import InputError


def shard_rows(global_batch_len: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) of a global batch of `global_batch_len` rows that rank `rank` of `world` takes."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    chunk = math.ceil(global_batch_len / world)
    return min(rank * chunk, global_batch_len), min((rank + 1) * chunk, global_batch_len)


def splits(global_batch_len: int, world: int) -> bool:
    """True when every rank of `world` gets at least one row of such a batch."""
    return shard_rows(global_batch_len, world - 1, world)[0] < global_batch_len


def global_batches(count: int, batch_size: int, world: int = 1) -> int:
    """Global batches an epoch over `count` items yields on every rank."""
    full, tail = divmod(count, batch_size)
    if world > 1 and full and not splits(batch_size, world):
        return 0
    return full + (1 if tail and (world == 1 or splits(tail, world)) else 0)


# One global batch: the item indices in drawn order and the augmentation parameters per row (or None).
Plan = tuple[torch.Tensor, torch.Tensor | None]


def plan_batches(
    count: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    draw: Callable[[int, torch.Generator | None], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[Plan]:
    """This rank's (indices, parameters) of each global batch, drawn lazily in the calling process:
    the order first (`torch.randperm(count, generator=generator)` when shuffling), then for each
    global batch `draw(len(batch), generator)` when given (one row of parameters per item)."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    rank, world = shard if shard is not None else (0, 1)
    if world > 1 and count >= batch_size and not splits(batch_size, world):
        raise InputError(f"a batch of {batch_size} cannot give each of {world} processes a row")
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    for start in range(0, count, batch_size):
        idx = order[start : start + batch_size]
        params = None if draw is None else draw(len(idx), generator)
        if world == 1:
            yield idx, params
            continue
        if not splits(len(idx), world):
            continue
        lo, hi = shard_rows(len(idx), rank, world)
        yield idx[lo:hi], None if params is None else params[lo:hi]
