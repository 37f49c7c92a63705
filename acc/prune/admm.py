"""ADMM structured pruning (Zhang et al. 2018, as AutoCompress uses it), then masked fine-tuning.

    min f(W)  s.t.  W_i in S_i
    W-step: SGD on f(W) + sum_i rho/2 * ||W_i - Z_i + U_i||^2
    Z-step: Z = Proj_S(W + U)      (keep the largest-norm channels / columns, zero the rest)
    U-step: U = U + W - Z
    rho grows after every Z/U update (times rho_mult, capped at rho_max).

rho's scale depends on how many W-steps there are: with learning rate lr and momentum m, one step
moves a weight by about lr / (1 - m) * rho * (W - Z + U), so over the ADMM phase the penalty's
total pull is sum_k rho_k * steps_k * lr / (1 - m). `rho=None` (the default) picks rho_0 so that
this pull is PULL (about e^-4 of a removed weight left if the loss did not resist): short runs get
a strong rho, long runs a gentle one (the paper's 1e-4..1e-3 at hundreds of epochs). Measured on
ResNet-20 with 1,800 images and 2 ADMM epochs, that strong rho hurt accuracy more than it helped
(the loss cannot follow a penalty that dominates it), so the default stays a fixed 1e-2.

The run is a resumable state machine: a checkpoint after every epoch holds the weights, the
optimizer, Z, U, rho, masks and where the run stands; each epoch's data order and augmentation are
seeded by (seed, epoch), so a resumed run computes what an uninterrupted one does.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import torch

from acc.prune import checkpoint as ckpt
from acc.prune import distributed
from acc.prune.constraints import ConstraintSet
from acc.prune.objective import Objective, evaluate


PULL = 4.0


def sgd(module: torch.nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """Nesterov SGD over the module's trainable parameters (ADMM, fine-tuning, the search's steps)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from base_lr at step 0 to 0 at total_steps."""
    return 0.5 * base_lr * (1 + math.cos(math.pi * step / total_steps))


@dataclass
class TrainConfig:
    admm_epochs: int = 4
    admm_iters: int = 4  # Z/U updates spread evenly over the ADMM epochs
    finetune_epochs: int = 4
    batch_size: int = 128
    lr: float = 0.01
    finetune_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    rho: float | None = 1e-2  # None: scaled to the step budget (see the module docstring)
    rho_mult: float = 2.0
    rho_max: float = 10.0
    seed: int = 0


@dataclass
class RunState:
    phase: str = "admm"  # admm -> (hard prune) finetune -> (near-zero purification) done
    epoch: int = 0  # epochs finished in the current phase
    updates: int = 0  # Z/U updates done
    rho: float = 0.0
    history: list = field(default_factory=list)


class Trainer:
    """Owns the torch module, the constraints and the state; `run()` goes (or resumes) to the end.

    Under torch.distributed (`world.size > 1`) every rank runs this same loop on its slice of each
    global batch (DistributedDataParallel averages the gradients); the loss of a slice is weighted
    by its share of the global batch, so the step is the one-process step on the whole batch. The
    weights stay identical on every rank, so Z, U, the masks and purification are too; only rank 0
    writes the checkpoint."""

    def __init__(self, module, constraints: ConstraintSet, tensors: dict[str, torch.Tensor], train, val,
                 objective: Objective, config: TrainConfig, checkpoint_path: str | os.PathLike | None = None,
                 progress=None, after_finetune=None, world: distributed.World | None = None,
                 device: torch.device | str = "cpu"):
        self.module = module
        self.world = world or distributed.World()
        self.device = torch.device(device)
        self._trained = None  # the module wrapped for multi-process training, made on first use
        self.constraints = constraints
        self.tensors = tensors  # ONNX initializer name -> torch tensor (parameters and buffers)
        self.train, self.val = train, val
        self.objective = objective
        self.cfg = config
        self.checkpoint_path = checkpoint_path
        self.progress = progress or (lambda **kw: None)
        self.after_finetune = after_finetune  # near-zero purification; returns a record for the history
        self.state = RunState(rho=config.rho if config.rho is not None else 0.0)
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.optimizer = None
        self.residuals: list[float] = []  # ||W - Z|| / ||W|| after each Z/U update
        self.distances: list[float] = []  # ||W - Proj_S(W)|| / ||W||: how far W is from the structure

    # -- parameters under constraint
    def _constrained(self) -> dict[str, torch.Tensor]:
        return {n: self.tensors[n] for n in self.constraints.constrained_names if n in self.tensors}

    def _make_optimizer(self, lr: float):
        return sgd(self.module, lr, self.cfg.momentum, self.cfg.weight_decay)

    def _steps_per_epoch(self) -> int:
        return distributed.shard_steps(len(self.train), self.cfg.batch_size, self.world.size)

    def _training_module(self):
        if self._trained is None:
            self._trained = distributed.wrap(self.module, self.world, self.device)
        return self._trained

    # -- checkpointing
    def save(self) -> None:
        if self.checkpoint_path is None or not self.world.is_main:
            return
        ckpt.save(self.checkpoint_path, {
            "state": asdict(self.state),
            "config": asdict(self.cfg),
            "module": self.module.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "Z": self.Z, "U": self.U, "masks": self.masks, "residuals": self.residuals,
            "distances": self.distances,
        })

    def restore(self, data: dict) -> None:
        if data["config"] != asdict(self.cfg):
            from acc.errors import InputError

            raise InputError("the checkpoint was made with other training options; rerun without --resume")
        self.module.load_state_dict(data["module"])
        self.state = RunState(**data["state"])
        device = {n: self.tensors[n].device for n in self.tensors}
        self.Z = {n: z.to(device[n]) for n, z in data["Z"].items()}
        self.U = {n: u.to(device[n]) for n, u in data["U"].items()}
        self.masks = {n: m.to(device[n]) for n, m in data["masks"].items()}
        self.residuals = data["residuals"]
        self.distances = data["distances"]
        if self.state.phase != "done":
            lr = self.cfg.lr if self.state.phase == "admm" else self.cfg.finetune_lr
            self.optimizer = self._make_optimizer(lr)
            if data["optimizer"] is not None:
                self.optimizer.load_state_dict(data["optimizer"])

    # -- the phases
    def run(self) -> RunState:
        if self.state.phase == "admm" and self.cfg.admm_epochs > 0:
            if not self.Z:
                w = self._constrained()
                self.Z = {n: z.detach().clone() for n, z in self.constraints.project(w).items()}
                self.U = {n: torch.zeros_like(z) for n, z in self.Z.items()}
                den = sum(float(w[n].detach().pow(2).sum()) for n in self.Z) or 1.0
                self.distances.append(math.sqrt(sum(float((w[n].detach() - self.Z[n]).pow(2).sum()) for n in self.Z) / den))
                self.optimizer = self._make_optimizer(self.cfg.lr)
                if self.cfg.rho is None:
                    self.state.rho = self.auto_rho()
            while self.state.epoch < self.cfg.admm_epochs:
                self._epoch(self.cfg.lr, self.cfg.admm_epochs, admm=True)
        if self.state.phase == "admm":
            self.hard_prune()
            self.state.phase, self.state.epoch = "finetune", 0
            self.optimizer = self._make_optimizer(self.cfg.finetune_lr)
            self.save()
        while self.state.phase == "finetune" and self.state.epoch < self.cfg.finetune_epochs:
            self._epoch(self.cfg.finetune_lr, self.cfg.finetune_epochs, admm=False)
        if self.state.phase == "finetune" and self.after_finetune is not None:
            # Near-zero purification judges removals by the loss, which means something only once
            # the masked model has recovered: it runs after fine-tuning.
            self.state.history.append(self.after_finetune(self))
        self.state.phase = "done"
        self.save()
        return self.state

    def auto_rho(self) -> float:
        """rho_0 whose geometric schedule over the ADMM phase pulls removed weights by about PULL."""
        cfg = self.cfg
        steps = self._steps_per_epoch() * cfg.admm_epochs
        k = max(cfg.admm_iters, 1)
        growth = sum(cfg.rho_mult**i for i in range(k)) / k  # mean multiplier over the updates
        return min(PULL * (1 - cfg.momentum) / (cfg.lr * steps * growth), cfg.rho_max)

    def hard_prune(self) -> None:
        self.masks = self.constraints.hard_masks(self._constrained(), self.tensors)
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, mask in self.masks.items():
            self.tensors[name].mul_(mask.to(self.tensors[name].dtype))

    def _epoch(self, base_lr: float, total_epochs: int, admm: bool) -> None:
        cfg, st = self.cfg, self.state
        steps = self._steps_per_epoch()
        total_steps = steps * total_epochs
        update_every = max(1, total_steps // max(cfg.admm_iters, 1))
        generator = torch.Generator().manual_seed(cfg.seed * 100003 + (0 if admm else 50000) + st.epoch)
        torch.manual_seed(cfg.seed * 7919 + st.epoch + (0 if admm else 50000))
        module = self._training_module()
        module.train()
        running = 0.0
        batches = self.train.batches(cfg.batch_size, shuffle=True, augment=True, generator=generator, shard=self.world.shard)
        for i, (x, y) in enumerate(batches):
            if i >= steps:
                break
            step = st.epoch * steps + i
            lr = cosine_lr(base_lr, step, total_steps)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            loss = self.objective(module(x), x, y)  # every output: see acc.prune.objective
            task_loss = float(loss.detach())
            if self.world.size > 1:  # this slice's share of the global batch (DDP averages over ranks)
                loss = loss * (len(x) * self.world.size / distributed.global_batch_len(i, len(self.train), cfg.batch_size))
            if admm:
                for n, w in self._constrained().items():
                    loss = loss + 0.5 * st.rho * (w - self.Z[n] + self.U[n]).pow(2).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if not admm:
                self.apply_masks()
            elif (step + 1) % update_every == 0 and st.updates < cfg.admm_iters:
                self._admm_update()
            running += task_loss
            if self.world.is_main:
                self.progress(phase="ADMM" if admm else "fine-tune", epoch=st.epoch + 1, epochs=total_epochs,
                              step=i + 1, steps=steps, loss=running / (i + 1), rho=st.rho if admm else None)
        running = self.world.sum([running])[0] / self.world.size
        record = {"phase": "admm" if admm else "finetune", "epoch": st.epoch + 1, "train_loss": running / steps}
        record.update({f"val_{k}": v for k, v in evaluate(self.module, self.val, self.objective, world=self.world).items()})
        if admm:
            record["rho"] = st.rho
            record["residual"] = self.residuals[-1] if self.residuals else None
            record["distance_to_structure"] = self.distances[-1] if self.distances else None
        st.history.append(record)
        st.epoch += 1
        self.save()

    @torch.no_grad()
    def _admm_update(self) -> None:
        w = self._constrained()
        wu = {n: w[n].detach() + self.U[n] for n in self.Z}
        self.Z = {n: z.clone() for n, z in self.constraints.project(wu).items()}
        for n in self.U:
            self.U[n] += w[n].detach() - self.Z[n]
        den = sum(float(w[n].detach().pow(2).sum()) for n in self.Z) or 1.0
        num = sum(float((w[n].detach() - self.Z[n]).pow(2).sum()) for n in self.Z)
        self.residuals.append(math.sqrt(num / den))
        projected = self.constraints.project({n: w[n].detach() for n in self.Z})
        gap = sum(float((w[n].detach() - projected[n]).pow(2).sum()) for n in self.Z)
        self.distances.append(math.sqrt(gap / den))
        self.state.updates += 1
        self.state.rho = min(self.state.rho * self.cfg.rho_mult, self.cfg.rho_max)
