"""Prune to a set of rates and recover without training: the one-shot masks, the layer-wise refit,
BatchNorm re-estimation where it helps; and the cheap variant the allocation search scores.

Order of the full recovery: masks (L1 channel norms, as every acc one-shot prune), then the refit
with the ORIGINAL BatchNorm statistics in place (each refitted layer reproduces the original's
pre-BatchNorm output, which those statistics normalise), then BatchNorm statistics re-estimated
on the estimation images, kept only if they bring the outputs on the validation images closer to
the original's.
"""

from __future__ import annotations

import torch

from acc.passes.analysis import Analysis
from acc.passes.plan import Plan
from acc.prune.bridge import TorchModel
from acc.prune.objective import evaluate
from acc.prune.posttrain.calibration import batchnorms, recalibrate_bn
from acc.prune.posttrain.refit import layers_to_refit, refit
from acc.prune.rates import Rates, build_constraints
from acc.prune.search import OneShotScorer


class CalibratedScorer(OneShotScorer):
    """The search's one-shot energy (masks, BatchNorm re-estimated, loss on validation images) with
    this package's BatchNorm re-estimation and the channel choice of `rankings`
    (selection.reconstruction_rankings; L1 in groups it does not rank): the energy of a
    zero-training candidate, the same for every seed."""

    rankings: dict | None = None

    def _constraints(self, rates):
        constraints = super()._constraints(rates)
        for g in constraints.groups:
            g.fixed_scores = (self.rankings or {}).get(g.name)
        return constraints

    def _recalibrate_bn(self, module, seed: int) -> None:
        if self.calibration is not None:
            recalibrate_bn(module, self.calibration)


@torch.no_grad()
def apply_rates(analysis: Analysis, bridge: TorchModel, rates: Rates, rankings: dict | None = None) -> Plan:
    """Zero, in the bridge's tensors, the channels `rates` removes (lowest in `rankings` first,
    smallest L1 norm in groups it does not rank); the plan of the channels kept."""
    constraints = build_constraints(analysis, bridge, rates, "l1")
    for g in constraints.groups:
        g.fixed_scores = (rankings or {}).get(g.name)
    tensors = bridge.tensors
    weights = {n: tensors[n] for n in constraints.constrained_names}
    plan = Plan({g.name: [int(j) for j in g.kept_channels(weights).nonzero().flatten()] for g in constraints.groups})
    masks = constraints.hard_masks(weights, tensors)
    for name, mask in masks.items():
        tensors[name].mul_(mask.to(tensors[name].dtype))
    return plan


def _bn_state(module) -> list:
    return [(m.running_mean.clone(), m.running_var.clone()) for m in batchnorms(module) if m.track_running_stats]


def _restore_bn(module, state) -> None:
    for m, (mean, var) in zip([m for m in batchnorms(module) if m.track_running_stats], state):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)


@torch.no_grad()
def recover(analysis: Analysis, plan: Plan, bridge: TorchModel, original: TorchModel, estimate, validate,
            objective, seed: int = 0, skip: set | None = None) -> dict:
    """Refit, then BatchNorm re-estimation if it helps; the bridge's module is changed in place.
    `skip`: weight names not to refit (they carry masks of their own, e.g. pruned columns)."""
    layers = layers_to_refit(analysis, plan, bridge, original)
    for layer in layers:
        if layer.skip is None and layer.weight in (skip or ()):
            layer.skip = "its weight has pruned columns, which a refit would refill"
    records = refit(layers, bridge.module, original.module, estimate, validate, seed)
    before = evaluate(bridge.module, validate, objective)["loss"]
    state = _bn_state(bridge.module)
    recalibrated = recalibrate_bn(bridge.module, estimate)
    after = evaluate(bridge.module, validate, objective)["loss"] if recalibrated else before
    kept = recalibrated > 0 and after < before
    if not kept:
        _restore_bn(bridge.module, state)
    return {"layers": records,
            "batchnorm": {"modules": recalibrated, "recalibrated": kept,
                          "validation_loss_without": before, "validation_loss_with": after},
            "validation_loss": min(before, after) if kept else before}
