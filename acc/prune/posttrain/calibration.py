"""BatchNorm statistics re-estimated on calibration images.

Pruning changes what every BatchNorm downstream sees; its running mean and variance, gathered on
the unpruned model, no longer normalise. The model runs in eval mode with only its BatchNorm
modules in train mode (each batch normalised by its own statistics, as in training), no grads,
and each BatchNorm's running statistics become the exact pooled mean and unbiased variance of its
input over all calibration images (sums accumulated in float64 across batches): a cumulative
average that, unlike the average of per-batch variances, counts the spread between batches too.

The images are augmented as in training (`augment=True`, the data's preset: random crop with
padding and flip for CIFAR): the statistics the model was trained with came from such images.
Measured on the shipped ResNet-20 (1,000 test images, 512 calibration images): re-estimated on
plain images the unpruned model falls from 89.7 % to 82.8 %, on augmented ones it keeps 89.4 %;
with 5 % of every group's channels removed by L1, 40.0 % becomes 75.3 % (plain) or 82.3 % (augmented).
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(module: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def recalibrate_bn(module: torch.nn.Module, data, batch_size: int = 128, augment: bool = True, seed: int = 0) -> int:
    """Re-estimate every BatchNorm's running statistics on `data` (batches of (x, y), augmented
    with a seeded draw); returns how many BatchNorm modules were re-estimated. Training flags are
    restored as they were."""
    bns = [m for m in batchnorms(module) if m.track_running_stats]
    if not bns:
        return 0
    flags = {m: m.training for m in module.modules()}
    sums: dict[_BatchNorm, list] = {}

    def accumulate(m, inputs):
        x = inputs[0].detach()
        dims = [d for d in range(x.dim()) if d != 1]
        x64 = x.double()
        s = sums.setdefault(m, [0.0, 0.0, 0])
        s[0] = s[0] + x64.sum(dims)
        s[1] = s[1] + (x64 * x64).sum(dims)
        s[2] += x.numel() // x.shape[1]

    handles = [m.register_forward_pre_hook(accumulate) for m in bns]
    try:
        module.eval()
        for m in bns:
            m.train()
        for x, _ in data.batches(batch_size, augment=augment, generator=torch.Generator().manual_seed(seed)):
            module(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in flags.items():
            m.training = training
    for m in bns:
        if m not in sums:
            continue  # not reached by the graph's inputs
        total, squares, n = sums[m]
        mean = total / n
        var = (squares - n * mean * mean).clamp_min(0.0) / max(n - 1, 1)
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    return len(sums)
