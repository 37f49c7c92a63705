"""`acc prune`: ADMM -> hard prune -> rewrite -> fine-tuning -> purification -> rewrite -> verify.

After the hard prune the masked model is rewritten into the physically smaller graph (verified
against it) and that small model is fine-tuned (acc.prune.shrink_phase); `finetune_small=False`
(--finetune-masked) fine-tunes the masked full-width model instead, to the same result, slower.

Purification has two parts: the near-zero part (channels whose removal keeps the validation loss
within a tolerance) runs after fine-tuning, when the loss is meaningful; the lossless part (dead
channels) is the ONNX rewrite itself.

The ONNX graph is the source of truth at both ends: the imported model is trained in torch
through the bridge, the trained result goes back into its graph, and the lossless ONNX
purification pass turns every zeroed channel into a physically removed one. The rewritten model
is verified against the model it came from (and, after small fine-tuning, against the full-width
masked model it stands for) before anything is written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import onnx
import torch

from acc.data import resolve_preprocess, sidecar_path
from acc.data.preprocess import read_preprocess_json
from acc.data.splits import DEFAULT_CACHE_MB, open_splits
from acc.errors import InputError
from acc.passes.analysis import analyze
from acc.passes.channels import WEIGHT_ROLES
from acc.passes.counting import count
from acc.passes.free_dims import keep_free_dims
from acc.passes.importer import normalize
from acc.passes.inputs import ImageInput, image_input, infer_layout
from acc.passes.load import load_model
from acc.passes.purify import purify
from acc.passes.verify import verify_equal
from acc.prune import checkpoint as ckpt
from acc.prune import distributed
from acc.prune.admm import TrainConfig, Trainer
from acc.prune.teacher import teacher_for
from acc.data.tensor_data import TensorData
from acc.prune.bridge import TorchModel
from acc.prune.cost import kept_channels
from acc.prune.objective import (DEFAULT_DISTILL_WEIGHT, DISTILL_TEMPERATURE, Objective, choose_supervision,
                                  classifier_output, describe_objective, evaluate, output_kinds)
from acc.prune.purify import DEFAULT_TOLERANCE, purify_near_zero, removals_beyond_request, skipped
from acc.prune.posttrain.after_cut import CutRecovery
from acc.prune.rates import Rates, build_constraints
from acc.prune.shrink_phase import Shrinker, compose


@dataclass
class PruneOptions:
    rates: Rates
    scheme: str = "filter"
    train: TrainConfig = field(default_factory=TrainConfig)
    labels: bool | None = None  # None: use labels when the data has them; False: distil
    distill_weight: float = DEFAULT_DISTILL_WEIGHT  # with labels: (1 - a) * cross-entropy + a * distillation
    temperature: float = DISTILL_TEMPERATURE  # of the distillation's softened distributions
    admm_choice: dict | None = None  # how --admm auto|on|off was decided (acc.prune.schedule.choose_admm), for the report
    validation_fraction: float = 0.1
    limit: int | None = None  # train on a seeded random subset of this size
    test_limit: int | None = None
    purify: bool = True  # near-zero purification (acc.prune.purify); the lossless part always runs
    purify_tolerance: float = DEFAULT_TOLERANCE  # relative validation-loss increase it may cost
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
    input_shapes: dict[str, list[int]] | None = None  # --input-shape: the shape to work at
    layout: str | None = None  # NCHW or NHWC (None: the preprocess JSON's, else read from the input's shape)
    round_to: int = 1  # --round-to: near-zero purification removes channels in blocks of this many
    finetune_small: bool = True  # fine-tune the physically smaller model (False: the masked full-width one)
    recover_cut: int = 0  # training images for the refit right after the hard prune (acc.prune.posttrain.after_cut); 0: none
    cut_ranking: bool = False  # with recover_cut, a one-shot cut takes the channels the refit best makes up for (measured worse at 4x)
    # The input model's test figures when the caller has them (a compile round: the last round's
    # result); not None skips that evaluation on every rank (other ranks pass {}).
    test_before: dict | None = None


@dataclass
class PruneResult:
    model: onnx.ModelProto | None  # None on the ranks other than 0 of a multi-process run
    masked: onnx.ModelProto | None
    report: dict | None


def resolve_input(model: onnx.ModelProto, preprocess_model, layout: str | None = None,
                  input_shapes: dict[str, list[int]] | None = None) -> ImageInput:
    """The image input of `model`, its layout and the shape to work at: `layout` and `input_shapes`
    (the options) first, then the layout and size in `preprocess_model`'s preprocess JSON
    (acc.passes.inputs.image_input)."""
    sidecar = sidecar_path(preprocess_model)
    declared = read_preprocess_json(sidecar) if sidecar.is_file() else {}
    layout_from = "--layout"
    if layout is None and "layout" in declared:
        layout, layout_from = declared["layout"], f"the layout in {sidecar.name}"
    size = declared.get("size")
    if size is not None and (not isinstance(size, (list, tuple)) or len(size) != 2):
        raise InputError(f"{sidecar}: size must be [height, width], got {size}")
    return image_input(model, input_shapes, layout, size, layout_from)


def load_training_data(data_path, model_path, options: PruneOptions, input_shape):
    """(train, validation, test or None, preprocessing): validation carved from train with the seed;
    in memory (TensorData) when the decoded images fit options.cache_mb, else streamed (StreamData)."""
    layout = options.layout or infer_layout(list(input_shape))
    pre = resolve_preprocess(options.preprocess_model or model_path, augment=options.augment, layout=layout)
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
    image = resolve_input(original, options.preprocess_model or model_path, options.layout, options.input_shapes)
    options = replace(options, input_shapes=image.shapes, layout=image.layout)
    model = normalize(original, image.shapes)
    analysis = analyze(model)
    if rates_from_analysis is not None:
        options.rates = rates_from_analysis(analysis)
    input_shape = analysis.index.shape(analysis.index.input_names[0])
    train, val, test, pre = load_training_data(data_path, model_path, options, input_shape)
    kinds = output_kinds(model)
    use_labels, needs_teacher = choose_supervision(kinds, train.labels is not None, options.labels, options.distill_weight)
    out_shape = analysis.index.shape(analysis.index.output_names[classifier_output(kinds) or 0]) or ()
    if use_labels and len(out_shape) == 2:
        for d in (train, val) + ((test,) if test is not None else ()):
            _check_labels(d, out_shape[1], data_path)
    weight_names = {m.initializer for m in analysis.members if m.role in WEIGHT_ROLES}
    bridge = TorchModel(model, trainable=weight_names)
    teacher, teacher_graph = None, None
    if needs_teacher:
        teacher_graph = model if options.teacher_model is None else normalize(load_model(options.teacher_model), options.input_shapes)
        teacher = teacher_for(teacher_graph, TorchModel(teacher_graph).module, distributed.rank_device(options.device))
    objective = Objective(teacher, use_labels=use_labels, kinds=kinds, temperature=options.temperature,
                          distill_weight=options.distill_weight)
    objective.teacher_graph = teacher_graph  # intermediate-feature distillation taps it (acc.prune.feature_distill)
    constraints = build_constraints(analysis, bridge, options.rates, options.criterion)
    device = torch.device(distributed.rank_device(options.device))
    bridge.to(device)
    train, val = train.to(device), val.to(device)
    test = None if test is None else test.to(device)
    tensors = bridge.tensors

    def score(module, data):
        return None if data is None else evaluate(module, data, objective, world=world)

    before = {"val": score(bridge.module, val),
              "test": score(bridge.module, test) if options.test_before is None else options.test_before or None}
    # Every rank rewrites the hard-pruned model in memory, the same way: they all train the same small model.
    shrinker = Shrinker(model, analysis, bridge, options.criterion, device) if options.finetune_small else None
    recovery = (CutRecovery(model, analysis, bridge, train, objective, options.recover_cut, options.train.seed, device,
                            ranking=options.cut_ranking) if options.recover_cut > 0 else None)
    trainer = Trainer(
        bridge.module, constraints, tensors, train, val, objective, options.train,
        checkpoint_path=options.checkpoint, progress=_Progress(options.progress and world.is_main),
        after_finetune=lambda t: {"phase": "purify", **_near_zero_record(t, options)}, world=world, device=device,
        shrink=shrinker, recovery=recovery,
    )
    if options.resume:
        trainer.restore(ckpt.load(options.checkpoint))
    trainer.run()
    trainer.apply_masks()
    after = {"val": score(trainer.module, val), "test": score(trainer.module, test)}
    if not world.is_main:
        return PruneResult(None, None, None)
    if shrinker is None:
        masked = bridge.to_onnx()
        purified = purify(masked)
        diffs = verify_equal(masked, purified.model, what="pruned model")
    else:
        small = shrinker.small
        trained = small.bridge.to_onnx()
        purified = purify(trained)
        diffs = verify_equal(trained, purified.model, what="pruned model")
        purified.plan = compose(small.plan, purified.plan, analysis)  # the report's widths are the original's
        masked = shrinker.expand(trained, small.plan)  # full width, for the free-dims check and the caller
        verify_equal(masked, purified.model, what="pruned model (against its full-width masked form)")
    described = describe_objective(kinds, use_labels, analysis.index.output_names, options.distill_weight,
                                   options.temperature)
    features = next((h for h in trainer.state.history if h.get("phase") == "feature_distill"), None)
    if features is not None:
        described += f"; fine-tuning also {features['weight']:g} x feature distillation ({features['tensors']} tensors)"
    report = _report(model, masked, purified, analysis, options, trainer, before, after, diffs, started, pre, described)
    dims = keep_free_dims(original, purified.model, model, masked)  # the original's free dims, checked at a second shape
    report["input"] = {**image.to_json(), "free_dims": dims.to_json()}
    return PruneResult(dims.model, masked, report)


def _finetune_record(trainer) -> dict:
    """Which model the fine-tuning trained, and how big it was."""
    params = sum(p.numel() for p in trainer.module.parameters() if p.requires_grad)
    masked = sum(int((~m).sum()) for m in trainer.masks.values())
    return {"model": "small" if trainer.shrunk is not None else "masked", "trained_params": params,
            "masked_entries": masked}


def _near_zero_record(trainer, options) -> dict:
    if not options.purify:
        return skipped(trainer, "turned off (--no-purify)").record(options.purify_tolerance)
    return purify_near_zero(trainer, options.purify_tolerance, options.purify_max_evaluations,
                            round_to=options.round_to).record(options.purify_tolerance)


def _report(model, masked, purified, analysis, options, trainer, before, after, diffs, started, pre, objective) -> dict:
    c0, cm, c1 = count(model), count(masked), count(purified.model)
    small = analyze(purified.model)
    widths_after = {g.name: g.width for g in small.groups}
    near_zero = next((h for h in trainer.state.history if h.get("phase") == "purify"), {})
    hard_kept = near_zero.get("kept_by_hard_prune") or trainer.state.kept_by_hard_prune
    layers = []
    for g in analysis.groups:
        if g.is_boundary:
            continue
        rate = options.rates.groups.get(g.name, 0.0)
        row = {
            "group": g.name,
            "scheme_rate": rate,
            "width_before": g.width,
            "kept_requested": kept_channels(g.width, len(g.prunable), rate),
            "kept_by_hard_prune": hard_kept.get(g.name, g.width),
            "removed_near_zero": near_zero.get("removed", {}).get(g.name, 0),
            "width_after": widths_after.get(g.name, len(purified.plan.keep.get(g.name, range(g.width)))),
        }
        row["removed_lossless"] = row["kept_by_hard_prune"] - row["removed_near_zero"] - row["width_after"]
        layers.append(row)
    columns = []
    for name, rate in options.rates.columns.items():
        columns.append({"layer": name, "column_rate": rate})
    return {
        "objective": objective,
        "accuracy_before": before, "accuracy_after": after,
        "params": {"before": c0.params, "after_dense": c1.params, "after_nonzero": c1.nonzero_params,
                   "reduction_dense": c0.params / max(c1.params, 1), "reduction_nonzero": c0.params / max(c1.nonzero_params, 1)},
        "flops": {"before": c0.flops, "after": c1.flops, "reduction": c0.flops / max(c1.flops, 1)},
        "masked_nonzero_params": cm.nonzero_params,
        "groups": layers, "columns": columns, "rates": options.rates.to_json(),
        "purification": {"near_zero": {k: v for k, v in near_zero.items() if k not in ("phase", "kept_by_hard_prune")},
                         "beyond_requested": removals_beyond_request(layers)},
        "history": trainer.state.history, "admm_residuals": trainer.residuals,
        "finetune": _finetune_record(trainer),
        "admm_choice": options.admm_choice,
        "admm_distance_to_structure": trainer.distances,
        "train_config": vars(options.train).copy(), "train_images": len(trainer.train), "val_images": len(trainer.val),
        "data": trainer.train.describe(),
        "world_size": trainer.world.size,
        "preprocess": pre.to_json(),
        "verification": [{"output": d.name, "max_abs_error": d.max_abs_error, "max_abs_output": d.max_abs_output} for d in diffs],
        "seconds": time.time() - started,
    }
