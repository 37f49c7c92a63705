"""`acc prune`: ADMM -> hard prune -> masked fine-tuning -> purification -> rewrite -> verify.

Purification has two parts: the near-zero part (channels whose removal keeps the validation loss
within a tolerance) runs after fine-tuning, when the loss is meaningful; the lossless part (dead
channels) is the ONNX rewrite itself.

The ONNX graph is the source of truth at both ends: the imported model is trained in torch
through the bridge, the masked result goes back into the same graph, and the lossless ONNX
purification pass turns every zeroed channel into a physically removed one. The rewritten model
is verified against the masked one before anything is written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import onnx
import torch

from acc.data import resolve_preprocess
from acc.data.splits import DEFAULT_CACHE_MB, open_splits
from acc.errors import InputError
from acc.passes.analysis import analyze
from acc.passes.channels import WEIGHT_ROLES
from acc.passes.counting import count
from acc.passes.importer import normalize
from acc.passes.load import load_model
from acc.passes.purify import purify
from acc.passes.verify import verify_equal
from acc.prune import checkpoint as ckpt
from acc.prune import distributed
from acc.prune.admm import TrainConfig, Trainer
from acc.prune.batches import TensorData
from acc.prune.bridge import TorchModel
from acc.prune.objective import Objective, evaluate
from acc.prune.purify import purify_near_zero
from acc.prune.rates import Rates, build_constraints


@dataclass
class PruneOptions:
    rates: Rates
    scheme: str = "filter"
    train: TrainConfig = field(default_factory=TrainConfig)
    labels: bool | None = None  # None: use labels when the data has them; False: distil
    validation_fraction: float = 0.1
    limit: int | None = None  # train on a seeded random subset of this size
    test_limit: int | None = None
    purify_tolerance: float = 1e-3
    purify_max_evaluations: int = 24
    checkpoint: str | os.PathLike | None = None
    resume: bool = False
    progress: bool = True
    threads: int | None = None
    device: str = "cpu"
    criterion: str = "l2"  # channel/column norm for the projection (one-shot baselines use l1)
    preprocess_model: str | os.PathLike | None = None  # whose <model>.preprocess.json to read
    teacher_model: str | os.PathLike | None = None  # distil from this model (default: the input)
    workers: int | None = None  # data loader processes (None: acc.data.stream.default_workers)
    cache_mb: float = DEFAULT_CACHE_MB  # decode into memory when the data fits, else stream
    augment: str | None = None  # augmentation preset (None: the preprocess JSON's, else by input size)


@dataclass
class PruneResult:
    model: onnx.ModelProto | None  # None on the ranks other than 0 of a multi-process run
    masked: onnx.ModelProto | None
    report: dict | None


def load_training_data(data_path, model_path, options: PruneOptions, input_shape):
    """(train, validation, test or None, preprocessing): validation carved from train with the seed;
    in memory (TensorData) when the decoded images fit options.cache_mb, else streamed (StreamData)."""
    pre = resolve_preprocess(options.preprocess_model or model_path, augment=options.augment)
    if len(input_shape) == 4:
        pre = replace(pre, size=tuple(input_shape[1:3] if pre.layout == "NHWC" else input_shape[2:]))
    return open_splits(data_path, pre, input_shape, labels=options.labels, limit=options.limit, test_limit=options.test_limit,
                       seed=options.train.seed, validation_fraction=options.validation_fraction,
                       workers=options.workers, cache_mb=options.cache_mb)


def _check_labels(data: TensorData, num_classes: int, source) -> None:
    if data.labels is not None and (int(data.labels.min()) < 0 or int(data.labels.max()) >= num_classes):
        raise InputError(f"{source}: labels must be in [0, {num_classes}), found {int(data.labels.min())}..{int(data.labels.max())}")


class _Progress:
    """One tqdm bar per epoch, with the running loss (and rho during ADMM)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, phase, epoch, epochs, step, steps, loss, rho=None):
        if not self.enabled:
            return
        from tqdm import tqdm

        if step == 1:
            self.bar = tqdm(total=steps, desc=f"{phase} {epoch}/{epochs}", leave=True, unit="batch")
        postfix = {"loss": f"{loss:.4f}"}
        if rho is not None:
            postfix["rho"] = f"{rho:.2g}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)
        if step == steps:
            self.bar.close()


def prune(model_path, data_path, options: PruneOptions, rates_from_analysis=None) -> PruneResult:
    """Every rank of a multi-process run trains; rank 0 alone rewrites and verifies (the other
    ranks return a PruneResult without model or report)."""
    started = time.time()
    world = distributed.setup(options.device)
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.train.seed)
    original = load_model(model_path)
    model = normalize(original)
    analysis = analyze(model)
    if rates_from_analysis is not None:
        options.rates = rates_from_analysis(analysis)
    input_shape = analysis.index.shape(analysis.index.input_names[0])
    train, val, test, pre = load_training_data(data_path, model_path, options, input_shape)
    out_shape = analysis.index.shape(analysis.index.output_names[0]) or ()
    use_labels = train.labels is not None if options.labels is None else options.labels
    if use_labels and len(out_shape) == 2:
        for d in (train, val) + ((test,) if test is not None else ()):
            _check_labels(d, out_shape[1], data_path)
    weight_names = {m.initializer for m in analysis.members if m.role in WEIGHT_ROLES}
    bridge = TorchModel(model, trainable=weight_names)
    teacher = None
    if not use_labels:
        teacher_graph = model if options.teacher_model is None else normalize(load_model(options.teacher_model))
        teacher = TorchModel(teacher_graph).module
    objective = Objective(teacher, use_labels=use_labels)
    constraints = build_constraints(analysis, bridge, options.rates, options.criterion)
    device = torch.device(distributed.rank_device(options.device))
    bridge.to(device)
    if teacher is not None:
        teacher.to(device)
    train, val = train.to(device), val.to(device)
    test = None if test is None else test.to(device)
    tensors = bridge.tensors

    def score(data):
        return None if data is None else evaluate(bridge.module, data, objective, world=world)

    before = {"val": score(val), "test": score(test)}
    trainer = Trainer(
        bridge.module, constraints, tensors, train, val, objective, options.train,
        checkpoint_path=options.checkpoint, progress=_Progress(options.progress and world.is_main),
        after_finetune=lambda t: {"phase": "purify", **_near_zero_record(t, options)}, world=world, device=device,
    )
    if options.resume:
        trainer.restore(ckpt.load(options.checkpoint))
    trainer.run()
    trainer.apply_masks()
    after = {"val": score(val), "test": score(test)}
    if not world.is_main:
        return PruneResult(None, None, None)
    masked = bridge.to_onnx()
    purified = purify(masked)
    diffs = verify_equal(masked, purified.model, what="pruned model")
    report = _report(model, masked, purified, analysis, options, trainer, before, after, diffs, started, pre, use_labels)
    return PruneResult(purified.model, masked, report)


def _near_zero_record(trainer, options) -> dict:
    r = purify_near_zero(trainer, options.purify_tolerance, options.purify_max_evaluations)
    return {"removed": r.removed, "evaluations": r.evaluations, "val_loss_before": r.loss_before, "val_loss_after": r.loss_after}


def _report(model, masked, purified, analysis, options, trainer, before, after, diffs, started, pre, use_labels) -> dict:
    c0, cm, c1 = count(model), count(masked), count(purified.model)
    small = analyze(purified.model)
    widths_after = {g.name: g.width for g in small.groups}
    layers = []
    for g in analysis.groups:
        if g.is_boundary:
            continue
        layers.append({
            "group": g.name,
            "scheme_rate": options.rates.groups.get(g.name, 0.0),
            "width_before": g.width,
            "width_after": widths_after.get(g.name, len(purified.plan.keep.get(g.name, range(g.width)))),
        })
    columns = []
    for name, rate in options.rates.columns.items():
        columns.append({"layer": name, "column_rate": rate})
    return {
        "objective": "cross-entropy on labels" if use_labels else "distillation from the original model",
        "accuracy_before": before, "accuracy_after": after,
        "params": {"before": c0.params, "after_dense": c1.params, "after_nonzero": c1.nonzero_params,
                   "reduction_dense": c0.params / max(c1.params, 1), "reduction_nonzero": c0.params / max(c1.nonzero_params, 1)},
        "flops": {"before": c0.flops, "after": c1.flops, "reduction": c0.flops / max(c1.flops, 1)},
        "masked_nonzero_params": cm.nonzero_params,
        "groups": layers, "columns": columns, "rates": options.rates.to_json(),
        "history": trainer.state.history, "admm_residuals": trainer.residuals,
        "admm_distance_to_structure": trainer.distances,
        "train_config": vars(options.train).copy(), "train_images": len(trainer.train), "val_images": len(trainer.val),
        "data": trainer.train.describe(),
        "world_size": trainer.world.size,
        "preprocess": pre.to_json(),
        "verification": [{"output": d.name, "max_abs_error": d.max_abs_error, "max_abs_output": d.max_abs_output} for d in diffs],
        "seconds": time.time() - started,
    }
