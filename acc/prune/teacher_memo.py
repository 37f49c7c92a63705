"""The teacher's outputs on a fixed evaluation set, computed once.

A run evaluates the same validation images after every epoch, around the hard prune, and up to
two dozen times in near-zero purification, and the same test images before and after every
round; each evaluation ran the teacher (the original model) again on images it had already
seen, un-augmented, in the same order. The teacher is frozen, so its outputs there never change:
the first evaluation of a data object records them per batch and later evaluations read them.

A batch is replayed only when it is the same batch: same data object (held weakly, so a freed
object's id cannot alias a new one), same batch size, same teacher, and the same input
fingerprint (shape and a checksum); anything else runs the teacher. Records are kept while they
fit in MEMO_BYTES (a detector's feature-map outputs on a large validation set may not).
"""

from __future__ import annotations

import weakref

import torch

MEMO_BYTES = 256 * 1024**2  # teacher outputs kept, over all data objects of one objective


def _nbytes(out) -> int:
    items = out if isinstance(out, (tuple, list)) else (out,)
    return sum(t.numel() * t.element_size() for t in items if isinstance(t, torch.Tensor))


def _fingerprint(x: torch.Tensor) -> tuple:
    return tuple(x.shape), float(x.detach().double().sum()), float(x.detach().double().abs().sum())


class TeacherMemo:
    """The teacher's outputs on the batches of evaluation sets, by (data, batch size)."""

    def __init__(self, limit_bytes: int = MEMO_BYTES):
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self._sets: dict[tuple, tuple] = {}  # (id(data), batch size) -> (weakref to data, teacher, {batch: record})
        self.hits = 0
        self.misses = 0

    def for_batches(self, data, batch_size: int, teacher):
        """A callable `run(i, x)`: the teacher's outputs on batch `i` (x) of `data` in order."""
        key = (id(data), batch_size)
        entry = self._sets.get(key)
        if entry is None or entry[0]() is not data or entry[1] is not teacher:
            self._drop(key)
            try:
                ref = weakref.ref(data, lambda _, key=key: self._drop(key))
            except TypeError:  # an object without weak references cannot be told from a later one
                return lambda i, x: teacher(x)
            entry = (ref, teacher, {})
            self._sets[key] = entry
        records = entry[2]

        def run(i: int, x: torch.Tensor):
            fingerprint = _fingerprint(x)
            hit = records.get(i)
            if hit is not None and hit[0] == fingerprint:
                self.hits += 1
                return hit[1]
            self.misses += 1
            out = teacher(x)
            if hit is not None:  # the batch changed: its record is stale
                del records[i]
                self.bytes -= _nbytes(hit[1])
            size = _nbytes(out)
            if self.bytes + size <= self.limit_bytes:
                records[i] = (fingerprint, out)
                self.bytes += size
            return out

        return run

    def _drop(self, key) -> None:
        entry = self._sets.pop(key, None)
        if entry is not None:
            self.bytes -= sum(_nbytes(out) for _, out in entry[2].values())
