"""The post-training recovery as the first step after a training run's hard prune.

`acc shrink --rate` recovers a cut model with no training: each layer that reads removed channels
is refitted by least squares to reproduce what it computed before the cut (refit.py), then
BatchNorm statistics are re-estimated where that helps (recover.py). In `acc prune`/`acc compile`
the same recovery runs right after the hard prune (after ADMM, or at once for one-shot), on a few
hundred training images (labels unused for the fit), so fine-tuning starts from weights that
already make up for most of what the cut removed, instead of from the bare masked weights.

With `ranking`, a one-shot cut also takes its channels by selection.py's greedy least-squares
ranking, as `acc shrink --rate` does. Off by default: measured with one fine-tuning epoch
(benchmarks/results/cut_recovery.json, ResNet-20), it tied the norms' choice at 2x and lost 3.2
points to it at 4x, although the ranked cut starts higher after the refit; what the refit makes up
for best is not what fine-tuning makes up for best. The reference is the model just before the
cut (the round's input for one-shot; the ADMM-trained weights otherwise), so the refit undoes the cut, not the training. Layers whose weights also carry
column masks (the column scheme) are left as they are: a refit would refill their pruned columns.
Every rank of a multi-process run computes the same refit; rank 0's weights are then broadcast so
that float reordering on GPUs cannot leave the ranks apart.
"""

from __future__ import annotations

import onnx
import torch

from acc.passes.analysis import Analysis
from acc.passes.plan import Plan
from acc.prune.bridge import TorchModel
from acc.prune.posttrain import CUT_RECOVERY_IMAGES
from acc.prune.posttrain.calibration_data import split_fit
from acc.prune.posttrain.recover import recover
from acc.prune.posttrain.selection import reconstruction_rankings

class CutRecovery:
    def __init__(self, model: onnx.ModelProto, analysis: Analysis, bridge: TorchModel, data, objective,
                 images: int = CUT_RECOVERY_IMAGES, seed: int = 0, device: torch.device | str = "cpu",
                 ranking: bool = False):
        self.model, self.analysis, self.bridge, self.ranking = model, analysis, bridge, ranking
        self.objective, self.seed, self.device = objective, seed, torch.device(device)
        n = min(images, len(data))
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + 17))[:n].sort().values
        n_est, _ = split_fit(n)
        self.estimate = data.subset(order[:n_est]).in_memory()
        self.validate = data.subset(order[n_est:]).in_memory()
        self._before: dict | None = None
        self._ranked = 0

    def snapshot(self, trainer) -> None:
        """Remember the weights just before the hard prune: the refit's reference. With `ranking`,
        a one-shot cut (no ADMM) takes its channels by what the refit can make up for
        (selection.py) instead of by norms; after ADMM the weights have already moved onto the
        norms' choice."""
        self._before = {k: v.detach().clone() for k, v in self.bridge.module.state_dict().items()}
        self._ranked = 0
        if self.ranking and trainer.cfg.admm_epochs == 0:
            groups = {g.name: g for g in trainer.constraints.groups}
            rankings = reconstruction_rankings(self.analysis, self.bridge, self.estimate, list(groups), self.seed)
            for name, scores in rankings.items():
                groups[name].fixed_scores = scores
            self._ranked = len(rankings)

    @torch.no_grad()
    def __call__(self, trainer) -> dict:
        """Refit and re-estimate BatchNorm in the trainer's (just hard-pruned, full-width) model;
        the record for the run's history."""
        reference = TorchModel(self.model)
        reference.module.load_state_dict(self._before)
        reference.to(self.device)
        plan = Plan({g.name: [int(j) for j in g.kept_channels(trainer.tensors).nonzero().flatten()]
                     for g in trainer.constraints.groups})
        for g in trainer.constraints.groups:
            g.fixed_scores = None  # from here on the masked weights' norms say what is kept
        columns = {c.name for c in trainer.constraints.columns}
        record = recover(self.analysis, plan, self.bridge, reference, self.estimate, self.validate, self.objective,
                         self.seed, skip=columns)
        trainer.apply_masks()
        world = trainer.world
        if world.size > 1:
            state = world.broadcast({k: v.cpu() for k, v in self.bridge.module.state_dict().items()})
            self.bridge.module.load_state_dict(state)
        self._before = None
        refitted = sum(1 for layer in record["layers"] if layer.get("refitted"))
        return {"refitted_layers": refitted, "layers": len(record["layers"]), "ranked_groups": self._ranked,
                "batchnorm_recalibrated": record["batchnorm"]["recalibrated"],
                "calibration_images": len(self.estimate) + len(self.validate)}
