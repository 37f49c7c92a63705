"""Kill a training run at a given fine-tuning step, the way Ctrl-C would, for the resume tests."""

from __future__ import annotations

from contextlib import contextmanager

import pytest


@contextmanager
def killed_at_fine_tuning(epoch: int, step: int):
    """The body's run raises KeyboardInterrupt at fine-tuning `epoch`, `step` (the test fails if it does not)."""
    from acc.prune import pipeline

    def interrupt(self, **kw):
        if kw["phase"] == "fine-tune" and kw["epoch"] == epoch and kw["step"] == step:
            raise KeyboardInterrupt

    original = pipeline._Progress.__call__
    pipeline._Progress.__call__ = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        pipeline._Progress.__call__ = original
