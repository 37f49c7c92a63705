"""The calibration images of a post-training shrink, and how many the refit needs.

`--calibration-images N` images are drawn (seeded) from the data's training split and cut in
three: the held-out part (one in eight, at least 8) is never fitted nor searched on and gives the
report's distances; of the rest, one in four validates (the ridge strength of each layer's refit,
the BatchNorm decision, the search's energy) and the others are fitted (normal equations, BatchNorm
statistics). Labels, when the data has them, are not used for any of this; they give accuracy.

How many images the refit needs: ridge regularisation (towards the pruned weights) keeps every
layer's least squares solvable with fewer rows than unknowns, so one row per unknown is not
required (more rows only make the fit better). What each layer does need is enough rows, not used
in its fit, to choose the ridge strength on: MIN_VALIDATION_ROWS. A conv gives one row per output
position per image, a Gemm one per image; the layer with the fewest rows per image decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from acc.errors import InputError
from acc.passes.analysis import Analysis
from acc.passes.channels import DW_WEIGHT, IN_WEIGHT

MIN_VALIDATION_ROWS = 32
VALIDATION_SHARE = 4  # one fitting image in this many validates
HELD_OUT_SHARE = 8  # one calibration image in this many is held out for the report
MIN_HELD_OUT = 8


def held_out_count(n: int) -> int:
    return max(MIN_HELD_OUT, n // HELD_OUT_SHARE)


def split_fit(n_fit: int) -> tuple[int, int]:
    """(estimate, validate) images of `n_fit` fitting images."""
    validate = max(1, n_fit // VALIDATION_SHARE)
    return n_fit - validate, validate


@dataclass
class Need:
    node: str
    op: str
    rows_per_image: int
    unknowns: int  # per output channel (kept inputs x taps, + bias), before pruning
    fit_images: int  # fitting images it needs
    images: int  # calibration images it needs (held-out part included)

    def message(self, given: int) -> str:
        return (f"--calibration-images {given} is too few for the refit of {self.op} '{self.node}' "
                f"({self.rows_per_image} row{'s' if self.rows_per_image != 1 else ''} per image, up to {self.unknowns} "
                f"unknowns per output channel): ridge regularisation keeps its least squares solvable with fewer rows "
                f"than unknowns, but its strength is chosen on {MIN_VALIDATION_ROWS} rows it is not fitted on, so it needs "
                f"{self.fit_images} fitting images (one in {VALIDATION_SHARE} validating) plus a held-out part for the "
                f"report: give at least {self.images}")


def refit_need(analysis: Analysis) -> Need | None:
    """The calibration images the refit of the most demanding layer needs (None: no layer reads a
    prunable channel)."""
    find = analysis.elements.find
    prunable = {find(int(g.channels[j][0])) for g in analysis.prunable_groups for j in g.prunable}
    nodes = {n.name: n for n in analysis.model.graph.node}
    worst = None
    for m in analysis.members:
        node = nodes[m.node]
        if m.role not in (IN_WEIGHT, DW_WEIGHT) or node.op_type not in ("Conv", "Gemm"):
            continue
        if not any(e >= 0 and find(e) in prunable for e in m.layout.tolist()):
            continue
        shape = analysis.index.shape(node.output[0]) or []
        rows = int(np.prod(shape[2:])) if node.op_type == "Conv" and len(shape) > 2 else 1
        weight = analysis.index.array(m.initializer)
        taps = int(np.prod(weight.shape[2:])) if node.op_type == "Conv" else 1
        per_group = 1 if m.role == DW_WEIGHT else len(m.layout)
        unknowns = per_group * taps + (1 if len(node.input) > 2 and node.input[2] else 0)
        fit = VALIDATION_SHARE * math.ceil(MIN_VALIDATION_ROWS / max(rows, 1))
        need = Need(m.node, node.op_type, max(rows, 1), unknowns, fit, images_for_fit(fit))
        if worst is None or (need.images, need.unknowns) > (worst.images, worst.unknowns):
            worst = need
    return worst


def images_for_fit(fit: int) -> int:
    n = fit + MIN_HELD_OUT
    while n - held_out_count(n) < fit:
        n += 1
    return n


def check_count(analysis: Analysis, given: int) -> Need | None:
    if given < 1:
        raise InputError(f"--calibration-images must be at least 1, got {given}")
    need = refit_need(analysis)
    minimum = need.images if need is not None else images_for_fit(VALIDATION_SHARE)
    if given < minimum:
        raise InputError(need.message(given) if need is not None else
                         f"--calibration-images {given} is too few: give at least {minimum}")
    return need


@dataclass
class CalibrationSet:
    estimate: object  # TensorData: fitted on (normal equations, BatchNorm statistics)
    validate: object  # TensorData: ridge strengths, BatchNorm decision, search energy
    held_out: object  # TensorData: the report's distances only
    test: object | None  # the data's test split, when it has one (accuracy)

    def sizes(self) -> dict:
        return {"fit": len(self.estimate), "validation": len(self.validate), "held_out": len(self.held_out),
                "test": 0 if self.test is None else len(self.test)}


def load_calibration(data, model_path, analysis: Analysis, images: int, seed: int, input_shapes=None, layout=None,
                     test_images: int | None = None) -> CalibrationSet:
    """Read and cut the calibration images (see the module docstring); the shape must fit the model."""
    from acc.prune.admm import TrainConfig
    from acc.prune.pipeline import PruneOptions, load_training_data
    from acc.prune.rates import Rates

    options = PruneOptions(rates=Rates(), train=TrainConfig(seed=seed), limit=images, test_limit=test_images or None,
                           validation_fraction=held_out_count(images) / images, input_shapes=input_shapes,
                           layout=layout, progress=False)
    input_shape = analysis.index.shape(analysis.index.input_names[0])
    fit, held_out, test, _ = load_training_data(data, model_path, options, input_shape)
    fit, held_out = fit.in_memory(), held_out.in_memory()
    test = None if test is None or test_images == 0 else test.in_memory()
    check_count(analysis, len(fit) + len(held_out))
    n_est, _ = split_fit(len(fit))
    order = torch.randperm(len(fit), generator=torch.Generator().manual_seed(seed + 1))
    return CalibrationSet(fit.subset(order[:n_est].sort().values), fit.subset(order[n_est:].sort().values), held_out, test)
