"""Train a conv net in channels-last memory where that is faster, decided by timing it.

On the CPU, oneDNN's convolutions run NHWC-blocked: a training step in channels-last memory took
261 against 343 ms for ResNet-20 pruned 4x, 297 against 427 ms for ResNet-20 and 1.83 against
2.84 s for MobileNetV2, but 1.92 against 1.63 s for VGG-16 (batch 64, one thread;
benchmarks/memory_format.py). So the layout is chosen per model by timing a few steps of a copy
in both. Only where the tensors sit in memory changes, never their shapes or values: results are the
same up to the order of float sums. So that a run gives the same figures when it is repeated, a
layout is taken only when it is clearly faster (MARGIN), and a process times each architecture once
(a checkpoint carries the choice to a resumed run).
"""

from __future__ import annotations

import copy
import time

import torch

PROBE_IMAGES = 32  # images per timed step
PROBE_ROUNDS = 2  # steps per layout (the first also warms up); the faster one counts
MARGIN = 0.85  # channels-last must be at least 15 % faster: the default layout is the safe one
_decided: dict = {}  # (parameter shapes, input shape, device) -> the choice, once per process


def channels_last_is_faster(module: torch.nn.Module, x: torch.Tensor, device) -> bool:
    """Whether `module` trains faster in channels-last memory on batches like `x` (timed on a
    copy, forward and backward; the CPU only: elsewhere the default layout is kept)."""
    if torch.device(device).type != "cpu" or x.dim() != 4 or not any(p.dim() == 4 for p in module.parameters()):
        return False
    key = (tuple(tuple(p.shape) for p in module.parameters()), tuple(x.shape[1:]), str(device), torch.get_num_threads())
    if key not in _decided:
        _decided[key] = _time_layouts(module, x)
    return _decided[key]


def _time_layouts(module: torch.nn.Module, x: torch.Tensor) -> bool:
    try:
        probe = copy.deepcopy(module).train()
        sample = x[:PROBE_IMAGES].detach()
        best = {}
        for _ in range(PROBE_ROUNDS):
            for channels_last in (False, True):
                layout = torch.channels_last if channels_last else torch.contiguous_format
                probe.to(memory_format=layout)
                started = time.perf_counter()
                _backward(probe, sample.contiguous(memory_format=layout))
                spent = time.perf_counter() - started
                best[channels_last] = min(best.get(channels_last, spent), spent)
                probe.zero_grad(set_to_none=True)
        return best[True] < MARGIN * best[False]
    except Exception:  # noqa: BLE001 - a model that does not run channels-last trains as it is
        return False


def _backward(module: torch.nn.Module, x: torch.Tensor) -> None:
    out = module(x)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    loss = sum(o.float().mean() for o in outs if o.is_floating_point() and o.requires_grad)
    if torch.is_tensor(loss):
        loss.backward()


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """In place (the parameters stay the same objects, so views of them and optimizers still hold)."""
    return module.to(memory_format=torch.channels_last)


def as_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
