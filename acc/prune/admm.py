"""ADMM structured pruning (Zhang et al. 2018, as AutoCompress uses it), then fine-tuning of the
physically smaller model (acc.prune.shrink_phase; or of the masked full-width one).

    min f(W)  s.t.  W_i in S_i
    W-step: SGD on f(W) + sum_i rho/2 * ||W_i - Z_i + U_i||^2
    Z-step: Z = Proj_S(W + U)      (keep the largest-norm channels / columns, zero the rest)
    U-step: U = U + W - Z
    rho grows after every Z/U update (times rho_mult).

Two W-steps (`TrainConfig.admm_mode`):
- `proximal` (the default): an SGD step on f alone at a constant learning rate, then the exact
  proximal step of the penalty, W <- W - lr*rho / (1 + lr*rho) * (W - Z + U): stable at any rho,
  and not filtered through the momentum. U is the dual scaled by 1/rho, so it is divided by
  rho_mult whenever rho grows (Boyd et al. 2011, 3.4.1). Each step moves a removed weight the
  share ~lr*rho of the way, so `rho=None` (the default) picks rho_0 whose geometric schedule sums
  lr*rho over the ADMM steps to PULL (e^-4 of a removed weight left if the loss did not resist):
  the weights reach the structure before the hard prune whatever the budget. Between the
  admm_iters Z/U updates Z alone follows W every step (`_follow_kept`), so the kept weights are
  free to make up for the removed ones instead of being tied to where they stood at the last
  update (measured +2 to +3 points; U every step too overshoots and lost 24 points at 2x).
- `penalty` (the schedule before issue 11): the penalty's gradient through the momentum, cosine
  learning rate, U kept as rho grows (rho capped at rho_max). With rho 0.01 at a demo budget the
  distance to the structure never moved before the hard prune.
Measured (benchmarks/admm_vs_oneshot.py, results/admm_vs_oneshot_short.json; ResNet-20, 1,350
images, 2 ADMM + 2 fine-tuning epochs): the distance to the structure before the hard prune fell
from 0.81 to 0.08 at 4x (penalty: 0.805) and the accuracy drop at the hard prune from 89 points
(one-shot) to 0; but the accuracy is lost during ADMM instead (15 % on validation just before the
cut), and the final accuracy is 44.0 % at 4x against one-shot's 37.9 (penalty 26.5), 67.1 against
70.3 at 2x. `acc.prune.schedule.choose_admm` is the policy that follows.

An epoch whose loss blows up (`DIVERGED_FACTOR`) is redone from its start at half the learning rate
(`Trainer._back_off`); after MAX_BACKOFFS halvings the phase ends where it was. High rates train at
up to 4x the base rate (acc.prune.schedule.lr_for_rate), and a user's model may not take it: without
this, the rest of the budget trained NaN weights and keep_best could only return an earlier state.

The run is a resumable state machine: a checkpoint after every epoch holds the weights, the
optimizer, Z, U, rho, masks and where the run stands (after the hard prune, also the small model's
graph to rebuild it from); each epoch's data order and augmentation are seeded by (seed, epoch), so a
resumed run computes what an uninterrupted one does.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field

import torch

from acc.prune import checkpoint as ckpt
from acc.prune import distributed
from acc.prune import feature_distill
from acc.prune.constraints import ConstraintSet
from acc.prune.memory_format import as_layout, channels_last_is_faster, to_channels_last
from acc.prune.objective import Objective, evaluate
from acc.prune.schedule import cosine_lr, decay_groups, lr_at  # noqa: F401 - cosine_lr: the search's steps


PULL = 4.0
# An epoch diverged when its training or validation loss is not finite or passes this many times
# max(the validation loss it started from, 1): the objective's terms are scaled so that a trivial
# predictor scores about 1 to ln(classes) (acc.prune.objective), and the high-rate dips that later
# recover stay within a few times their start; only a run that blew up goes past 1000x.
DIVERGED_FACTOR = 1000.0
MAX_BACKOFFS = 4  # halvings of the learning rate before a phase gives up its remaining epochs


def divergence_lines(history: list[dict], config: "TrainConfig") -> list[str]:
    """One line per diverged epoch in a run's history, for the log (the records are in report.json)."""
    lr = {"admm": config.lr, "finetune": config.finetune_lr}
    return [f"{h['in']} epoch {h['epoch']} diverged at learning rate {lr[h['in']] * h['lr_scale']:g} (loss {h['train_loss']}, "
            f"validation {h['val_loss']}): {h['action']}" for h in history if h.get("phase") == "diverged"]


def sgd(module: torch.nn.Module, lr: float, momentum: float, weight_decay: float,
        decay_norm_and_bias: bool = True) -> torch.optim.SGD:
    """Nesterov SGD over the module's trainable parameters (ADMM, fine-tuning, the search's steps);
    see acc.prune.schedule.decay_groups for which of them decay."""
    groups = decay_groups(module, weight_decay, decay_norm_and_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


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
    rho: float | None = None  # None: scaled to the step budget (see the module docstring)
    rho_mult: float = 2.0
    rho_max: float = 10.0  # the penalty mode's cap (the proximal step is stable at any rho)
    seed: int = 0
    # ADMM W-step: "proximal" (SGD on the loss at a constant rate, then the exact proximal step of
    # the penalty; the scaled dual U rescaled when rho grows) or "penalty" (the penalty's gradient
    # through the momentum, cosine rate, U kept: the schedule before issue 11).
    admm_mode: str = "proximal"
    schedule: str = "cosine"  # fine-tuning learning rate (acc.prune.schedule)
    warmup: float = 0.0  # share of the fine-tuning steps the cosine schedule warms up over
    decay_norm_and_bias: bool = False  # True: weight decay on BatchNorm and biases too (measured: 1.2 points worse)
    # Fine-tuning ends on the state with the lowest validation loss among the cut (after its recovery)
    # and every fine-tuning epoch: a refitted cut can be better than where a short fine-tune leaves it.
    keep_best: bool = True
    # Weight of intermediate-feature distillation while the physically smaller model fine-tunes
    # (acc.prune.feature_distill; 0: off).
    feature_distill: float = 0.0


@dataclass
class RunState:
    phase: str = "admm"  # admm -> (hard prune) finetune -> (near-zero purification) done
    epoch: int = 0  # epochs finished in the current phase
    updates: int = 0  # Z/U updates done
    rho: float = 0.0
    history: list = field(default_factory=list)
    kept_by_hard_prune: dict = field(default_factory=dict)  # group name -> channels the hard prune kept
    lr_scale: float = 1.0  # halved each time an epoch diverged (`Trainer._diverged`); kept across phases
    backoffs: int = 0
    reference_loss: float | None = None  # the last finite validation loss: where the next epoch starts


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
                 device: torch.device | str = "cpu", shrink=None, recovery=None):
        self.module = module
        self.world = world or distributed.World()
        self.device = torch.device(device)
        self._trained = None  # the module wrapped for multi-process training, made on first use
        self.channels_last: bool | None = None  # train in channels-last memory (acc.prune.memory_format); None: not decided yet
        self.constraints = constraints
        self.tensors = tensors  # ONNX initializer name -> torch tensor (parameters and buffers)
        self.train, self.val = train, val
        self.objective = objective
        self.cfg = config
        self.checkpoint_path = checkpoint_path
        self.progress = progress or (lambda **kw: None)
        self.after_finetune = after_finetune  # near-zero purification; returns a record for the history
        # Rebuilds the hard-pruned model physically smaller for fine-tuning (acc.prune.shrink_phase.Shrinker);
        # None: fine-tune the full-width model under its masks.
        self.shrink = shrink
        # Called right after the hard prune (acc.prune.posttrain.after_cut.CutRecovery): a refit of the
        # cut layers before fine-tuning; its snapshot() right before the cut. None: fine-tune as cut.
        self.recovery = recovery
        self.shrunk: dict | None = None  # what a checkpoint needs to rebuild the small model
        self.state = RunState(rho=config.rho if config.rho is not None else 0.0)
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.optimizer = None
        self.best: dict | None = None  # keep_best: {"epoch", "val_loss", "state"} of the best fine-tuning state
        self.residuals: list[float] = []  # ||W - Z|| / ||W|| after each Z/U update
        self.distances: list[float] = []  # ||W - Proj_S(W)|| / ||W||: how far W is from the structure

    # -- parameters under constraint
    def _constrained(self) -> dict[str, torch.Tensor]:
        return {n: self.tensors[n] for n in self.constraints.constrained_names if n in self.tensors}

    def _make_optimizer(self, lr: float):
        return sgd(self.module, lr, self.cfg.momentum, self.cfg.weight_decay, self.cfg.decay_norm_and_bias)

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
            "distances": self.distances, "shrunk": self.shrunk, "best": self.best,
            "channels_last": self.channels_last,  # a resumed run trains in the layout the run was timed to
        })

    def restore(self, data: dict) -> None:
        if data["config"] != asdict(self.cfg):
            from acc.errors import InputError

            raise InputError("the checkpoint was made with other training options; rerun without --resume")
        shrunk = data.get("shrunk")
        if data["state"]["phase"] != "admm" and (shrunk is not None) != (self.shrink is not None):
            from acc.errors import InputError

            made = ("the physically smaller model: resume without --finetune-masked" if shrunk is not None
                    else "the masked full-width model: resume with --finetune-masked")
            raise InputError(f"the checkpoint fine-tunes {made}, or rerun without --resume")
        if shrunk is not None:
            self._adopt(self.shrink.from_payload(shrunk))
        self.module.load_state_dict(data["module"])
        self.channels_last = data.get("channels_last")
        if self.channels_last:
            to_channels_last(self.module)
        self.state = RunState(**data["state"])
        device = {n: self.tensors[n].device for n in self.tensors}
        self.Z = {n: z.to(device[n]) for n, z in data["Z"].items()}
        self.U = {n: u.to(device[n]) for n, u in data["U"].items()}
        self.masks = {n: m.to(device[n]) for n, m in data["masks"].items()}
        self.residuals = data["residuals"]
        self.distances = data["distances"]
        self.best = data.get("best")
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
            cut = self._measured_hard_prune()
            self.state.history.append(cut)
            if self.shrink is not None:
                self._adopt(self.shrink.from_hard_prune(self))
                if self.objective.features is not None:
                    self.state.history.append({"phase": "feature_distill", "weight": self.cfg.feature_distill,
                                               "tensors": len(self.objective.features.taps)})
            self._remember(0, cut.get("val_loss_recovered", cut.get("val_loss_after")))
            self.state.reference_loss = cut.get("val_loss_recovered", cut.get("val_loss_after"))
            self.state.phase, self.state.epoch = "finetune", 0
            self.optimizer = self._make_optimizer(self.cfg.finetune_lr)
            if self.cfg.admm_epochs > 0:  # one-shot: the hard prune is a function of the input, redone on
                self.save()  # resume, and a run that fails on its first batch leaves no file behind
        try:
            while self.state.phase == "finetune" and self.state.epoch < self.cfg.finetune_epochs:
                self._epoch(self.cfg.finetune_lr, self.cfg.finetune_epochs, admm=False)
        finally:  # an interrupted run must not leave the hooks, or the taps' onnxruntime threads, behind
            feature_distill.detach(self.objective)
        if self.state.phase == "finetune":
            self._restore_best()
        if self.state.phase == "finetune" and self.after_finetune is not None:
            # Near-zero purification judges removals by the loss, which means something only once
            # the masked model has recovered: it runs after fine-tuning.
            self.state.history.append(self.after_finetune(self))
        self.state.phase = "done"
        self.save()
        return self.state

    def _remember(self, epoch: int, val_loss: float | None) -> None:
        """keep_best: hold a copy of the state if its validation loss is the lowest so far."""
        if not self.cfg.keep_best or val_loss is None or not math.isfinite(val_loss) or self.cfg.finetune_epochs == 0:
            return
        if self.best is None or val_loss < self.best["val_loss"]:
            state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            self.best = {"epoch": epoch, "val_loss": val_loss, "state": state}

    def _restore_best(self) -> None:
        """keep_best: end fine-tuning on the best state, recorded in the history when it is not the last."""
        if self.best is None:
            return
        if self.best["epoch"] != self.state.epoch:
            self.module.load_state_dict(self.best["state"])
            self.state.history.append({"phase": "keep_best", "epoch": self.best["epoch"], "val_loss": self.best["val_loss"],
                                       "val_loss_last": self.state.history[-1].get("val_loss")})
        self.best = None

    def auto_rho(self) -> float:
        """rho_0 whose geometric schedule over the ADMM phase pulls removed weights by about PULL."""
        cfg = self.cfg
        steps = self._steps_per_epoch() * cfg.admm_epochs
        k = max(cfg.admm_iters, 1)
        growth = sum(cfg.rho_mult**i for i in range(k)) / k  # mean multiplier over the updates
        if cfg.admm_mode == "proximal":  # each step moves the share ~lr*rho, momentum aside
            return PULL / (cfg.lr * steps * growth)
        return min(PULL * (1 - cfg.momentum) / (cfg.lr * steps * growth), cfg.rho_max)

    def hard_prune(self) -> None:
        self.masks = self.constraints.hard_masks(self._constrained(), self.tensors)
        self.apply_masks()
        self.state.kept_by_hard_prune = {g.name: int((g.scores(self.tensors) > 0).sum()) for g in self.constraints.groups}

    def _adopt(self, small) -> None:
        """Train `small` (an acc.prune.shrink_phase.SmallModel) from here on: its module, tensors,
        constraints and masks replace the full model's; Z and U (full-width, ADMM's) are done with."""
        self.module, self.tensors = small.bridge.module, small.bridge.tensors
        self.constraints, self.masks = small.constraints, small.masks
        self.shrunk = small.payload()
        if self.cfg.feature_distill > 0 and self.shrink is not None:
            sample = next(iter(self.train.batches(self.cfg.batch_size)))[0]  # the same batch on every rank and resume
            feature_distill.attach(self.objective, self.shrink, small, self.cfg.feature_distill, sample)
        self._trained = None
        self.channels_last = None
        self.Z, self.U = {}, {}

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
        start = self._snapshot()
        batches = self.train.batches(cfg.batch_size, shuffle=True, augment=True, generator=generator, shard=self.world.shard)
        for i, (x, y) in enumerate(batches):
            if i >= steps:
                break
            if self.channels_last is None:  # decided once per module, on its first batch (one process only)
                self.channels_last = self.world.size == 1 and channels_last_is_faster(self.module, x, self.device)
                if self.channels_last:
                    to_channels_last(self.module)
            step = st.epoch * steps + i
            if admm:
                lr = base_lr if cfg.admm_mode == "proximal" else cosine_lr(base_lr, step, total_steps)
            else:
                lr = lr_at(cfg.schedule, base_lr, step, total_steps, cfg.warmup)
            lr *= st.lr_scale
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            loss = self.objective(module(as_layout(x, self.channels_last)), x, y)  # every output: see acc.prune.objective
            task_loss = float(loss.detach())
            if self.world.size > 1:  # this slice's share of the global batch (DDP averages over ranks)
                loss = loss * (len(x) * self.world.size / distributed.global_batch_len(i, len(self.train), cfg.batch_size))
            if admm and cfg.admm_mode == "penalty":
                for n, w in self._constrained().items():
                    loss = loss + 0.5 * st.rho * (w - self.Z[n] + self.U[n]).pow(2).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not admm:
                self._mask_gradients()  # decay and momentum on the kept weights only
            self.optimizer.step()
            if admm and cfg.admm_mode == "proximal":
                self._proximal_step(lr)
            if not admm:
                self.apply_masks()
            elif (step + 1) % update_every == 0 and st.updates < cfg.admm_iters:
                self._admm_update()
            elif cfg.admm_mode == "proximal":
                self._follow_kept()
            running += task_loss
            if self.world.size == 1 and not math.isfinite(task_loss):
                steps = i + 1  # no step can bring it back; the epoch is redone below at a lower rate
                break
            if self.world.is_main:
                self.progress(phase="ADMM" if admm else "fine-tune", epoch=st.epoch + 1, epochs=total_epochs,
                              step=i + 1, steps=steps, loss=running / (i + 1), rho=st.rho if admm else None)
        running = self.world.sum([running])[0] / self.world.size
        record = {"phase": "admm" if admm else "finetune", "epoch": st.epoch + 1, "train_loss": running / steps}
        record.update({f"val_{k}": v for k, v in evaluate(self.module, self.val, self.objective, world=self.world).items()})
        if self._diverged(record):
            self._back_off(start, record, admm)
            return
        st.reference_loss = record["val_loss"]
        if admm:
            record["rho"] = st.rho
            record["residual"] = self.residuals[-1] if self.residuals else None
            record["distance_to_structure"] = self.distances[-1] if self.distances else None
        st.history.append(record)
        st.epoch += 1
        if not admm:
            self._remember(st.epoch, record.get("val_loss"))
        self.save()

    def _diverged(self, record: dict) -> bool:
        """The epoch blew up (see DIVERGED_FACTOR); every rank decides alike, on figures summed over ranks."""
        reference = self.state.reference_loss
        limit = DIVERGED_FACTOR * max(reference if reference is not None and math.isfinite(reference) else 1.0, 1.0)
        return any(not math.isfinite(v) or v > limit for v in (record["train_loss"], record["val_loss"]))

    def _snapshot(self) -> dict:
        """What an epoch changes, copied at its start (on the CPU: no accelerator memory) for
        `_back_off` to return to."""
        def host(tensors: dict) -> dict:
            return {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy.deepcopy(v) for k, v in tensors.items()}

        optimizer = self.optimizer.state_dict()
        return {
            "module": host(self.module.state_dict()),
            "optimizer": {"param_groups": copy.deepcopy(optimizer["param_groups"]),
                          "state": {i: host(s) if isinstance(s, dict) else s for i, s in optimizer["state"].items()}},
            "Z": host(self.Z), "U": host(self.U),
            "state": copy.deepcopy(asdict(self.state)),
            "residuals": list(self.residuals), "distances": list(self.distances),
        }

    def _back_off(self, start: dict, record: dict, admm: bool) -> None:
        """A diverged epoch: back to where it started, at half the learning rate, and redo it; after
        MAX_BACKOFFS halvings the phase ends there (fine-tuning then ends on its best state, ADMM
        goes on to the hard prune). Recorded in the history (report.json)."""
        self.module.load_state_dict(start["module"])
        self.optimizer.load_state_dict(start["optimizer"])
        device = {n: self.tensors[n].device for n in start["Z"]}
        self.Z = {n: z.to(device[n]) for n, z in start["Z"].items()}
        self.U = {n: u.to(device[n]) for n, u in start["U"].items()}
        self.residuals, self.distances = start["residuals"], start["distances"]
        st = self.state = RunState(**start["state"])
        st.backoffs += 1
        gave_up = st.backoffs > MAX_BACKOFFS
        st.history.append({"phase": "diverged", "in": "admm" if admm else "finetune", "epoch": st.epoch + 1,
                           "train_loss": record["train_loss"], "val_loss": record["val_loss"],
                           "lr_scale": st.lr_scale,
                           "action": "phase ended" if gave_up else "epoch redone at half the learning rate"})
        if gave_up:
            st.epoch = self.cfg.admm_epochs if admm else self.cfg.finetune_epochs
        else:
            st.lr_scale *= 0.5
        self.save()

    def _measured_hard_prune(self) -> dict:
        """hard_prune(), with what it costs: the distance to the structure just before, and the
        validation figures just before and after (the hard-prune drop ADMM is there to shrink)."""
        record = {"phase": "hard_prune", "distance_to_structure": self._distance()}
        before = evaluate(self.module, self.val, self.objective, world=self.world)
        if self.recovery is not None:
            self.recovery.snapshot(self)
        self.hard_prune()
        after = evaluate(self.module, self.val, self.objective, world=self.world)
        for key in ("loss", "accuracy"):
            if key in before:
                record[f"val_{key}_before"], record[f"val_{key}_after"] = before[key], after[key]
        if self.recovery is not None:
            record["recovery"] = self.recovery(self)
            recovered = evaluate(self.module, self.val, self.objective, world=self.world)
            for key in ("loss", "accuracy"):
                if key in recovered:
                    record[f"val_{key}_recovered"] = recovered[key]
        return record

    @torch.no_grad()
    def _distance(self) -> float:
        """||W - Proj_S(W)|| / ||W|| over the constrained weights."""
        w = {n: t.detach() for n, t in self._constrained().items()}
        projected = self.constraints.project(w)
        den = sum(float(t.pow(2).sum()) for t in w.values()) or 1.0
        return math.sqrt(sum(float((w[n] - projected[n]).pow(2).sum()) for n in projected) / den)

    @torch.no_grad()
    def _mask_gradients(self) -> None:
        for name, mask in self.masks.items():
            grad = self.tensors[name].grad
            if grad is not None:
                grad.mul_(mask.to(grad.dtype))

    @torch.no_grad()
    def _proximal_step(self, lr: float) -> None:
        """W <- argmin_V ||V - W||^2 / (2 lr) + rho/2 ||V - Z + U||^2: W moves the share
        lr*rho / (1 + lr*rho) of the way to Z - U, which never overshoots however large rho is."""
        share = lr * self.state.rho / (1 + lr * self.state.rho)
        for n, w in self._constrained().items():
            w.sub_(share * (w - self.Z[n] + self.U[n]))

    @torch.no_grad()
    def _follow_kept(self) -> None:
        """Z-step alone between the Z/U updates: Z = Proj_S(W + U) copies the kept weights, so the
        proximal step pulls only the removed ones and the kept ones are free to make up for them
        (with Z fixed between updates they were tied to where they stood at the last update)."""
        w = self._constrained()
        self.Z = {n: z.clone() for n, z in self.constraints.project({n: w[n].detach() + self.U[n] for n in self.Z}).items()}

    @torch.no_grad()
    def _admm_update(self) -> None:
        w = self._constrained()
        wu = {n: w[n].detach() + self.U[n] for n in self.Z}
        self.Z = {n: z.clone() for n, z in self.constraints.project(wu).items()}
        for n in self.U:
            self.U[n] += w[n].detach() - self.Z[n]
        if self.cfg.admm_mode == "proximal":
            # U is the dual scaled by 1/rho (Boyd et al. 2011, 3.4.1): it shrinks as rho grows.
            self.state.rho *= self.cfg.rho_mult
            for n in self.U:
                self.U[n] /= self.cfg.rho_mult
        else:
            self.state.rho = min(self.state.rho * self.cfg.rho_mult, self.cfg.rho_max)
        den = sum(float(w[n].detach().pow(2).sum()) for n in self.Z) or 1.0
        num = sum(float((w[n].detach() - self.Z[n]).pow(2).sum()) for n in self.Z)
        self.residuals.append(math.sqrt(num / den))
        projected = self.constraints.project({n: w[n].detach() for n in self.Z})
        gap = sum(float((w[n].detach() - projected[n]).pow(2).sum()) for n in self.Z)
        self.distances.append(math.sqrt(gap / den))
        self.state.updates += 1
