"""Learning-rate schedules and weight-decay groups for ADMM and fine-tuning (acc/prune/admm.py).

A schedule gives the learning rate of step `step` of `total` from the phase's base rate:
- `cosine`: linear warm-up from 0 over the first `warmup` share of the steps, then cosine decay to 0;
- `onecycle`: rise from base/25 to base over the first 30 % of the steps, then cosine decay to ~0
  (Smith and Topin 2019);
- `rewind`: learning-rate rewinding (Renda et al. 2020): the tail of a classic step schedule, the
  base rate for the first half, a tenth of it for the next quarter, a hundredth for the last;
- `constant`: the base rate throughout (the ADMM W-step of the proximal schedule, whose pull on the
  removed weights would otherwise fade with the rate).

Weight decay goes on the kept weights only: the fine-tuning masks the gradients too, so neither
decay nor momentum moves a removed weight; `decay_norm_and_bias=False` (the default) also leaves
BatchNorm scales and shifts and biases (every parameter of rank 0 or 1) without decay.

Measured (benchmarks/training_recipe.py, results/training_recipe.json; ResNet-20 at 2x, one-shot
+ 4 fine-tuning epochs on 1,350 CIFAR-10 images, 1,000 test images): cosine 70.3 %, cosine with
10 % warm-up 70.1, one-cycle 69.7, rewinding 67.3; no decay on BatchNorm and biases 71.5. So:
cosine without warm-up, and no decay on BatchNorm and biases.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "onecycle", "rewind", "constant")


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from base_lr at step 0 to 0 at total_steps."""
    return 0.5 * base_lr * (1 + math.cos(math.pi * step / max(total_steps, 1)))


def lr_at(schedule: str, base_lr: float, step: int, total_steps: int, warmup: float = 0.0) -> float:
    """The learning rate of `step` (0-based) of `total_steps` under `schedule` (see the module docstring)."""
    total_steps = max(total_steps, 1)
    if schedule == "cosine":
        warm = int(round(warmup * total_steps))
        if step < warm:
            return base_lr * (step + 1) / warm
        return cosine_lr(base_lr, step - warm, total_steps - warm)
    if schedule == "onecycle":
        rise = max(1, int(0.3 * total_steps))
        if step < rise:
            return base_lr / 25 + (base_lr - base_lr / 25) * step / rise
        return base_lr / 1e4 + 0.5 * (base_lr - base_lr / 1e4) * (1 + math.cos(math.pi * (step - rise) / max(total_steps - rise, 1)))
    if schedule == "rewind":
        return base_lr * (1.0 if step < total_steps // 2 else 0.1 if step < 3 * total_steps // 4 else 0.01)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (one of {', '.join(SCHEDULES)})")


def decay_groups(module: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool = True) -> list[dict]:
    """The module's trainable parameters as optimizer groups: with decay, and (when
    `decay_norm_and_bias` is False) the rank-0/1 ones (BatchNorm, biases) without."""
    params = [p for p in module.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]


BASE_LR = 0.01  # acc prune's default, and acc compile's up to 2x
MAX_LR_FACTOR = 4.0


def lr_for_rate(rate: float) -> float:
    """acc compile's learning rate for a --rate when --lr is not given: BASE_LR x rate / 2, from 1x
    at 2x and below to MAX_LR_FACTOR x at 8x and beyond. A deeper cut leaves the kept weights further
    from a good solution for the smaller model, and a short budget has to move them there; past 8x a
    higher rate broke the fine-tuning instead.
    Measured (ResNet-20, 2 rounds x 4 epochs on 4,000 CIFAR-10 images, 2,000 test images, 3 seeds):
    at 2x lr 0.01 80.5 +- 0.8 %, 0.02 79.9 +- 1.0 (a tie); at 4x 0.005 68.8 +- 0.5, 0.01 71.0,
    0.02 72.4 +- 0.4, 0.04 72.3 +- 0.4; at 8x 0.01 53.7 +- 2.6, 0.02 61.4 +- 1.5, 0.04 64.1 +- 0.4;
    at 16x 0.04 39.2 +- 2.5, 0.08 40.5 +- 7.5 (two of three runs broke down and kept their cut state);
    benchmarks/results/lr_by_rate.json."""
    return BASE_LR * min(max(rate / 2, 1.0), MAX_LR_FACTOR)


ADMM_MODES = ("auto", "on", "off")
# Below this many ADMM epochs one-shot pruning + fine-tuning with all the epochs did as well or
# better (benchmarks/admm_vs_oneshot.py): ResNet-20, 1,350 images, results/admm_vs_oneshot_short.json:
# 2+2 epochs at 2x 67.1 (ADMM) vs 70.3 % (one-shot), at 4x 44.0 vs 37.9; 1+1 at 4x 26.4 vs 26.5;
# 3+3 epochs on 8,000 images (old schedule) lost at 2x, 4x and 8x; on all of CIFAR-10 (GPU, old
# schedule) 4+4 lost at 8x (73.0 vs 74.2) and 10+10 won (79.4 vs 77.9), the first measured win.
MIN_ADMM_EPOCHS = 10


def choose_admm(mode: str, admm_epochs: int, finetune_epochs: int) -> dict:
    """How a run spends its epochs under `--admm mode`: "on" as given, "off" one-shot (magnitude
    hard prune of the start, then fine-tuning with every epoch), "auto" ADMM from MIN_ADMM_EPOCHS
    ADMM epochs up, else one-shot. Returns {mode, method, admm_epochs, finetune_epochs, reason}."""
    if mode not in ADMM_MODES:
        raise ValueError(f"--admm takes one of {', '.join(ADMM_MODES)}, got {mode!r}")
    total = admm_epochs + finetune_epochs
    if mode == "on" or (mode == "auto" and admm_epochs >= MIN_ADMM_EPOCHS):
        reason = "asked for (--admm on)" if mode == "on" else f"{admm_epochs} ADMM epochs >= {MIN_ADMM_EPOCHS}"
        return {"mode": mode, "method": "admm", "admm_epochs": admm_epochs, "finetune_epochs": finetune_epochs,
                "reason": reason}
    if mode == "off":
        reason = "asked for (--admm off)"
    elif admm_epochs == 0:
        reason = "no ADMM epochs asked for"
    else:
        reason = (f"{admm_epochs} ADMM epoch(s) is too short for ADMM to help (it pays from {MIN_ADMM_EPOCHS}): "
                  f"one-shot pruning + fine-tuning with all {total} epochs")
    return {"mode": mode, "method": "one-shot", "admm_epochs": 0, "finetune_epochs": total, "reason": reason}
