"""`acc shrink MODEL --rate R --data D`: the rate reached with no training at all.

import -> analysis -> calibration images -> channel rankings (selection.py) -> allocation search
(allocate.py) -> masks + refit + BatchNorm (recover.py) -> rewrite -> verify (the rewritten graph
against the masked, refitted model in onnxruntime) -> report, with distances measured on held-out
calibration images.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import onnx
import torch

from acc.errors import InputError
from acc.passes.analysis import analyze
from acc.passes.counting import count
from acc.passes.importer import normalize
from acc.passes.load import load_model
from acc.passes.mask import masked_model
from acc.passes.rewrite import rewrite
from acc.passes.shrink import ShrinkResult, given_counts
from acc.passes.verify import verify_equal
from acc.prune.bridge import TorchModel
from acc.prune.teacher import teacher_for
from acc.prune.objective import Objective, output_kinds
from acc.prune.pipeline import resolve_input
from acc.prune.posttrain.allocate import search_rates
from acc.prune.posttrain.calibration_data import check_count, load_calibration
from acc.prune.posttrain.distance import accuracy, output_distance
from acc.prune.posttrain.recover import CalibratedScorer, apply_rates, recover
from acc.prune.posttrain.selection import reconstruction_rankings
from acc.prune.search import SearchConfig, cost_model, max_reduction, to_rates

METRICS = ("params", "flops")
SELECTIONS = ("reconstruction", "l1")
DEFAULT_IMAGES = 512


def default_search() -> SearchConfig:
    # Zero-training energy: no fine-tune steps, and the same energy for every seed (no confirmation).
    return SearchConfig(finetune_steps=0, confirm_seeds=0, t_start=100.0, t_end=20.0, cooling=0.9)


@dataclass
class PostTrainOptions:
    rate: float  # reduction: 2.0 = half the parameters (or FLOPs)
    metric: str = "params"
    calibration_images: int = DEFAULT_IMAGES
    seed: int = 0
    test_images: int | None = None  # of the data's test split, for accuracy (None: all, 0: none)
    search: SearchConfig = field(default_factory=default_search)
    input_shapes: dict | None = None
    layout: str | None = None
    selection: str = "reconstruction"  # which channels go: reconstruction (selection.py) | l1


@dataclass
class PostTrainResult(ShrinkResult):
    details: dict = field(default_factory=dict)

    def report(self) -> dict:
        return {**super().report(), "post_training": self.details}


def post_training_shrink(model_path: str | os.PathLike, data, options: PostTrainOptions, log=None) -> PostTrainResult:
    started = time.time()
    log = log or (lambda *a, **k: None)
    if options.selection not in SELECTIONS:
        raise InputError(f"the channel choice is one of {', '.join(SELECTIONS)}, got '{options.selection}'")
    if options.metric not in METRICS:
        raise InputError(f"--metric must be one of {', '.join(METRICS)} for --rate, got '{options.metric}'")
    if not options.rate > 1.0:
        raise InputError(f"--rate must be more than 1x, got {options.rate:g}")
    loaded = load_model(model_path)
    image = resolve_input(loaded, model_path, options.layout, options.input_shapes)
    model = normalize(loaded, image.shapes)
    analysis = analyze(model)
    cost = cost_model(analysis, options.metric)
    reachable = max_reduction(analysis, options.metric, options.search)
    if options.rate > reachable:
        raise InputError(f"--rate {options.rate:g}x is out of reach for this graph: the most it can reach is "
                         f"{reachable:.1f}x fewer {options.metric} (every prunable group at {options.search.max_rate:.0%})")
    check_count(analysis, options.calibration_images)
    calib = load_calibration(data, model_path, analysis, options.calibration_images, options.seed,
                             image.shapes, image.layout, options.test_images)
    log("calibration images: " + ", ".join(f"{v} {k}" for k, v in calib.sizes().items()))
    kinds = output_kinds(model)
    bridge, original = TorchModel(model), TorchModel(model)
    objective = Objective(teacher_for(model, original.module, "cpu"), use_labels=False, kinds=kinds)
    config = options.search
    scorer = CalibratedScorer(analysis, bridge, objective, calib.validate, calib.estimate, config, cost=cost)
    if options.selection == "reconstruction":
        log("ranking every group's channels by what their consumers' least squares lose without them")
        scorer.rankings = reconstruction_rankings(analysis, original, calib.estimate, cost.names, options.seed)
    target = cost.total(options.metric) / options.rate
    best = {}  # the recovered finalist with the lowest energy: its weights, plan and record

    def recovered_energy(rates) -> float:
        bridge.module.load_state_dict(scorer.original)
        plan = apply_rates(analysis, bridge, to_rates(cost, rates), scorer.rankings)
        record = recover(analysis, plan, bridge, original, calib.estimate, calib.validate, objective, options.seed)
        energy = record["validation_loss"] * config.energy_scale
        if not best or energy < best["energy"]:
            best.update(energy=energy, plan=plan, record=record,
                        state={k: v.detach().clone() for k, v in bridge.module.state_dict().items()})
        refitted = sum(1 for layer in record["layers"] if layer.get("refitted"))
        log(f"candidate refitted ({refitted} layers): distance to the original on validation images {record['validation_loss']:.4f}")
        return energy

    log(f"searching per-group rates for {options.rate:g}x fewer {options.metric} (no training)")
    allocation = search_rates(analysis, cost, scorer, target, options.metric, config, recovered_energy)
    log(f"chose the {allocation.chosen} allocation; rewriting and verifying")
    bridge.module.load_state_dict(best["state"])
    plan, recovery = best["plan"], best["record"]
    refitted = bridge.to_onnx()
    refitted_analysis = analyze(refitted)  # the same graph, the refitted weights: the rewrite reads them
    out = rewrite(refitted_analysis, plan)
    diffs = verify_equal(masked_model(refitted_analysis, plan), out, what="shrunk model")
    held_out = {"original": output_distance(original.module, original.module, calib.held_out, objective),
                "pruned": output_distance(bridge.module, original.module, calib.held_out, objective)}
    test = None
    if calib.test is not None and calib.test.labels is not None:
        test = {"images": len(calib.test), "accuracy_before": accuracy(original.module, calib.test, kinds),
                "accuracy_after": accuracy(bridge.module, calib.test, kinds)}
    before = given_counts(loaded, count(model, analysis.index))
    after = count(out)
    group_rates, _ = cost.split(allocation.rates)
    details = {
        "rate_requested": options.rate, "metric": options.metric,
        "reduction": {"params": before.params / max(after.params, 1), "flops": before.flops / max(after.flops, 1)},
        "calibration_images": calib.sizes(), "labels_used": False,
        "selection": {"criterion": options.selection,
                      "ranked_groups": len(scorer.rankings or {}), "groups": len(cost.names)},
        "rates": {name: float(r) for name, r in zip(cost.names, group_rates) if r > 0},
        "allocation": {"chosen": allocation.chosen, "starts": allocation.starts, "finalists": allocation.finalists,
                       "search": allocation.search, "config": asdict(config)},
        "recovery": recovery, "held_out": held_out, "test": test,
        "seconds": time.time() - started,
    }
    return PostTrainResult(out, "rate", before, after, plan, refitted_analysis, diffs, loaded.ByteSize(), out.ByteSize(),
                           details=details)


def shrink_with_rate(model_path, data, rate: float, metric: str = "params", calibration_images: int = DEFAULT_IMAGES,
                     seed: int = 0, test_images: int | None = None, input_shapes: dict | None = None,
                     search: SearchConfig | None = None, selection: str = "reconstruction", log=None) -> PostTrainResult:
    if isinstance(model_path, onnx.ModelProto):
        raise InputError("--rate needs the model as a file (its preprocess JSON is read from beside it)")
    torch.manual_seed(seed)
    options = PostTrainOptions(rate=rate, metric=metric, calibration_images=calibration_images, seed=seed,
                               test_images=test_images, input_shapes=input_shapes, search=search or default_search(),
                               selection=selection)
    return post_training_shrink(model_path, data, options, log)
