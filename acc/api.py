"""The Python API: one function per CLI command, returning data instead of printing.

    import acc.api as acc
    info = acc.analyze("model.onnx")
    result = acc.shrink("model.onnx", ratio=0.5, output="small.onnx", report="report.json")
"""

from __future__ import annotations

import json
import os

from acc import atomic
from acc.passes.analysis import analyze as _analyze
from acc.passes.importer import import_model
from acc.passes.shrink import ShrinkResult
from acc.passes.shrink import shrink as _shrink
from acc.passes.summary import describe
from acc.prune.posttrain import CUT_RECOVERY_IMAGES


def analyze(model: str | os.PathLike, input_shapes: dict | None = None, prune_embedding: bool = False) -> dict:
    """Channel groups, boundaries and totals of a model (the data behind `acc analyze --json`).
    `prune_embedding`: a transformer's residual stream (LayerNorm-coupled) counts as prunable."""
    return describe(_analyze(import_model(model, input_shapes), prune_embedding=prune_embedding))


def shrink(
    model: str | os.PathLike,
    output: str | os.PathLike | None = None,
    ratio: float | None = None,
    criterion: str = "l1",
    report: str | os.PathLike | None = None,
    input_shapes: dict | None = None,
    prune_embedding: bool = False,
    rate: float | None = None,
    data: str | os.PathLike | None = None,
    metric: str = "params",
    calibration_images: int = 512,
    seed: int = 0,
    test_images: int | None = None,
    round_to: int = 1,
    selection: str = "reconstruction",
    log=None,
) -> ShrinkResult:
    """Lossless purification (ratio=None) or one-shot pruning of `ratio` of every group
    (`prune_embedding`: a transformer's residual stream too; `round_to` K: each group keeps a
    multiple of K channels, acc.prune.cost.kept_channels); or, with `rate` and `data`,
    post-training compression to `rate`x fewer `metric` (searched rates, refit, BatchNorm
    re-estimation from `calibration_images` images; acc.prune.posttrain), removing in each group the
    channels the refit can best make up for (`selection="l1"`: the smallest L1 norms instead).

    The result is verified before anything is written; outputs are written atomically.
    """
    from acc.prune.posttrain.request import check_request

    check_request(ratio, rate, data)
    for path in (output, report):
        if path is not None:
            atomic.check_output_path(path)
    if rate is not None:
        from acc.prune.posttrain.shrink import shrink_with_rate

        result = shrink_with_rate(model, data, rate, metric=metric, calibration_images=calibration_images, seed=seed,
                                  test_images=test_images, input_shapes=input_shapes, selection=selection, log=log)
    else:
        result = _shrink(model, ratio=ratio, criterion=criterion, input_shapes=input_shapes,
                         prune_embedding=prune_embedding, round_to=round_to)
    result.model = _keep_free_dims(model, result)
    if output is not None:
        atomic.write_bytes(output, result.model.SerializeToString())
    if report is not None:
        atomic.write_text(report, json.dumps(result.report(), indent=2))
    return result


def _keep_free_dims(source, result: ShrinkResult):
    """The shrunk model with the free (symbolic) dims of `source`, where a second shape verifies it
    (acc.passes.free_dims); else as it was made, at the imported shape."""
    import onnx

    from acc.passes.free_dims import free_dims, keep_free_dims
    from acc.passes.load import load_model
    from acc.passes.mask import masked_model

    original = source if isinstance(source, onnx.ModelProto) else load_model(source)
    if getattr(result, "unchanged", None) or not free_dims(original):  # nothing to give back
        return result.model
    imported = result.analysis.model
    masked = imported if result.mode == "purify" else masked_model(result.analysis, result.plan)
    return keep_free_dims(original, result.model, imported, masked).model


def prune(
    model: str | os.PathLike,
    data: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    rates: str | os.PathLike | dict | None = None,
    uniform: float | None = None,
    scheme: str = "filter",
    labels: bool | None = None,
    epochs: int = 4,
    admm_iters: int = 4,
    finetune_epochs: int | None = None,
    lr: float = 0.01,
    finetune_lr: float | None = None,
    rho: float | str | None = "auto",
    rho_mult: float = 2.0,
    admm: str = "auto",
    admm_mode: str = "proximal",
    distill_weight: float | None = None,
    temperature: float | None = None,
    feature_distill: float | None = None,
    schedule: str = "cosine",
    warmup: float = 0.0,
    decay_norm_and_bias: bool = False,
    batch_size: int = 128,
    limit: int | None = None,
    seed: int = 0,
    report: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
    criterion: str = "l2",
    test_limit: int | None = None,
    purify_evaluations: int = 24,
    purify: bool = True,
    purify_tolerance: float = 1e-3,
    workers: int | None = None,
    cache_mb: float = 1024.0,
    augment: str | None = None,
    input_shapes: dict | None = None,
    layout: str | None = None,
    round_to: int = 1,
    finetune_small: bool = True,
    target: str | None = None,
    rpc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    recover_cut: int = CUT_RECOVERY_IMAGES,
    cut_ranking: bool = False,
    keep_best: bool = True,
    log=print,
):
    """ADMM structured pruning with given rates (a rates JSON path or dict, or `uniform`), then
    masked fine-tuning, purification, rewrite and verification. Returns a PruneResult.

    `purify=False` skips near-zero purification (the lossless part always runs);
    `purify_tolerance` is the relative validation-loss increase its removals may cost.
    `input_shapes` ({name: dims}) and `layout` ("NCHW"/"NHWC") are --input-shape and --layout.
    `round_to` K: every pruned group keeps a multiple of K channels (acc.prune.cost.kept_channels).
    `finetune_small=False` (--finetune-masked) fine-tunes the masked full-width model instead of
    the physically smaller one (acc.prune.shrink_phase): the same result, slower; for comparison.
    `target` (with `rpc`, or `tracker` and `key`, for a device; "onnxruntime" for this machine's
    onnxruntime) times the result against the original there: the report's `latency` section.
    `recover_cut` N: right after the hard prune, the cut layers are refitted by least squares on N
    training images and BatchNorm re-estimated (acc.prune.posttrain.after_cut; 0: none);
    `cut_ranking=True` makes a one-shot cut take the channels the refit best makes up for instead
    of the largest norms (measured: a tie at 2x, 3 points worse at 4x after one epoch).
    `keep_best` (default): fine-tuning ends on the state with the lowest validation loss among the
    recovered cut and every fine-tuning epoch (the history's `keep_best` record says when that is
    not the last epoch); False: on the last epoch. `feature_distill` W > 0: while the physically
    smaller model fine-tunes, W x intermediate-feature distillation joins the objective
    (acc.prune.feature_distill; the history's `feature_distill` record says how many tensors)."""
    from acc.backends import latency_device
    from acc.errors import InputError
    from acc.prune.admm import TrainConfig, divergence_lines
    from acc.prune.pipeline import PruneOptions
    from acc.prune.pipeline import prune as _prune
    from acc.prune.rates import Rates, check_round_to, load_rates, round_rates, uniform_rates
    from acc.prune.schedule import choose_admm

    for path in (output, report):
        if path is not None:
            atomic.check_output_path(path)
    if (rates is None) == (uniform is None):
        raise InputError("give exactly one of --rates and --uniform")
    _check_purify_tolerance(purify_tolerance)
    timed_on = latency_device.check(target, rpc, tracker, key)
    if checkpoint is None and output is not None:
        checkpoint = f"{output}.ckpt"
    if resume and checkpoint is None:
        raise InputError("--resume needs a checkpoint (or an output path to derive it from)")
    if isinstance(rho, str):
        if rho != "auto":
            try:
                rho = float(rho)
            except ValueError:
                raise InputError(f"--rho takes a number or 'auto', got '{rho}'") from None
        else:
            rho = None
    recipe = _training_recipe(distill_weight, temperature, admm, admm_mode, schedule, warmup, recover_cut, feature_distill)
    choice = choose_admm(admm, epochs, epochs if finetune_epochs is None else finetune_epochs)
    if choice["method"] == "one-shot" and epochs > 0:
        log(f"ADMM: {choice['reason']}")
    config = TrainConfig(
        admm_epochs=choice["admm_epochs"], admm_iters=admm_iters, finetune_epochs=choice["finetune_epochs"],
        batch_size=batch_size, lr=lr, finetune_lr=lr if finetune_lr is None else finetune_lr, rho=rho,
        rho_mult=rho_mult, seed=seed, admm_mode=admm_mode, schedule=schedule, warmup=warmup,
        decay_norm_and_bias=decay_norm_and_bias, keep_best=keep_best, feature_distill=recipe["feature_distill"],
    )

    def choose(analysis):  # --round-to K: every group rate moved to a width that is a multiple of K
        return round_rates(analysis, requested(analysis), check_round_to(analysis, round_to))

    def requested(analysis):
        if uniform is not None:
            return uniform_rates(analysis, uniform, scheme)
        if isinstance(rates, dict):
            tmp = Rates()
            tmp.groups, tmp.columns = dict(rates.get("groups", {})), dict(rates.get("columns", {}))
            return tmp
        return load_rates(rates, analysis)

    options = PruneOptions(rates=Rates(), scheme=scheme, train=config, labels=labels, limit=limit,
                           checkpoint=checkpoint, resume=resume, progress=progress, device=device,
                           criterion=criterion, test_limit=test_limit, purify_max_evaluations=purify_evaluations,
                           purify=purify, purify_tolerance=purify_tolerance,
                           workers=workers, cache_mb=cache_mb, augment=augment, input_shapes=input_shapes,
                           layout=layout, distill_weight=recipe["distill_weight"], temperature=recipe["temperature"],
                           admm_choice=choice, round_to=round_to, finetune_small=finetune_small,
                           recover_cut=recipe["recover_cut"], cut_ranking=cut_ranking)
    result = _prune(model, data, options, rates_from_analysis=choose)
    if result.model is None:  # a rank other than 0 of a multi-process run: rank 0 writes
        return result
    for line in divergence_lines(result.report["history"], options.train):
        log(line)
    if output is not None:
        atomic.write_bytes(output, result.model.SerializeToString())
    if timed_on is not None:
        result.report["latency"] = _measure_latency(model, result.model, output, timed_on, log)
    if report is not None:
        from acc.report import strict_json

        atomic.write_text(report, strict_json(result.report, indent=2))
    return result


def _measure_latency(original, pruned, output, device, log) -> dict:
    """The report's `latency` section: the pruned model against the original, on `device`."""
    import tempfile

    from acc.backends import latency_device

    if output is not None:
        return latency_device.measure(original, output, device, log=log)
    with tempfile.TemporaryDirectory(prefix="acc-prune-") as tmp:
        path = os.path.join(tmp, "pruned.onnx")
        atomic.write_bytes(path, pruned.SerializeToString())
        return latency_device.measure(original, path, device, log=log)


def compile(  # noqa: A001 - the verb users know
    model: str | os.PathLike,
    rate: str | float,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    metric: str = "params",
    rounds: int = 3,
    budget_epochs: int = 4,
    search_steps: int | None = None,
    eval_images: int = 512,
    search_finetune_steps: int = 50,
    search_share: float = 0.25,
    search_starts: tuple | list | str | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    target: str | None = None,
    tune_trials: int = 0,
    tune_db: str | os.PathLike | None = None,
    labels: bool | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 128,
    lr: float | None = None,
    resume: bool = False,
    progress: bool = True,
    strategy: str = "anneal",
    workers: int | None = None,
    cache_mb: float = 1024.0,
    augment: str | None = None,
    ray: str | bool | None = None,
    candidates: int | None = None,
    candidate_cpus: float | None = None,
    candidate_gpus: float | None = None,
    purify: bool = True,
    purify_tolerance: float = 1e-3,
    input_shapes: dict | None = None,
    layout: str | None = None,
    round_to: int | None = None,
    distill_weight: float | None = None,
    temperature: float | None = None,
    feature_distill: float | None = None,
    admm: str = "auto",
    rpc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    latency_cache: str | os.PathLike | None = None,
    latency_check: bool = True,
    recover_cut: int = CUT_RECOVERY_IMAGES,
    keep_best: bool = True,
    log=print,
):
    """The whole AutoCompress pipeline (see acc.autocompress). Returns a CompileResult whose
    `report` is what report.json holds.

    `ray=True` (or "local") scores the search's candidates on a Ray cluster started for the run,
    `ray="HOST:PORT"` on an existing one; `candidates` per search step (default 1, or with Ray
    the workers the cluster holds), each Ray worker with `candidate_cpus` (1) and `candidate_gpus` (0).
    `purify` and `purify_tolerance` as for `prune`, in every round; `round_to` K: kept channel
    counts are multiples of K, and the search meets the rate with those widths (None: 1, or 8 with
    the latency metric); `search_share`: the
    most of each round's compute the search may take (fine-tune steps, then annealing steps are cut
    to fit; 0: no cap; acc.prune.search.fit_budget); `search_starts`: the start allocations scored
    (default uniform, l1, bn: the lowest energy is where the annealing starts). `target` builds a
    TVM library ("onnxruntime": none) and times the result against the original there (`rpc`, or
    `tracker` and `key`, reach a device); `metric="latency"` counts milliseconds on that target from
    a per-layer table timed there and cached under `latency_cache` (default ~/.cache/acc/latency);
    `latency_check` times the result against the original on onnxruntime when there is no target;
    `recover_cut`, `keep_best` and `feature_distill` as for `prune`, in every round; `lr` the training's learning rate
    (None: 0.01 x rate / 2, from 0.01 at 2x to 0.04 at 8x and beyond; acc.prune.schedule.lr_for_rate)."""
    import math

    from acc.autocompress import CompileOptions, compile_model, parse_rate
    from acc.errors import InputError
    from acc.prune.search import SearchConfig

    _check_purify_tolerance(purify_tolerance)
    recipe = _training_recipe(distill_weight, temperature, admm, recover_cut=recover_cut, feature_distill=feature_distill)
    if search_finetune_steps < 0:
        raise InputError("--search-finetune-steps must be 0 or more")
    if candidates is not None and candidates < 1:
        raise InputError("--candidates must be at least 1")
    ray = "local" if ray is True else (ray or None)
    if not ray and (candidate_cpus is not None or candidate_gpus is not None):
        raise InputError("--candidate-cpus and --candidate-gpus size Ray workers: give them with --ray")
    if not 0 <= search_share < 1:
        raise InputError(f"--search-share is the share of each round the search may take, in [0, 1) (0: no cap), got {search_share}")
    search = SearchConfig(eval_images=eval_images, finetune_steps=search_finetune_steps, search_share=search_share)
    if search_starts is not None:
        search.starts = _search_starts(search_starts)
    if search_steps is not None:
        if search_steps < 1:
            raise InputError("--search-steps must be at least 1")
        search.cooling = math.exp(math.log(search.t_end / search.t_start) / search_steps)
    options = CompileOptions(rate=parse_rate(rate), metric=metric, rounds=rounds, budget_epochs=budget_epochs,
                             labels=labels, seed=seed, resume=resume, limit=limit, test_limit=test_limit,
                             batch_size=batch_size, lr=lr, device=device, progress=progress, search=search,
                             target=target, tune_trials=tune_trials, strategy=strategy, workers=workers,
                             cache_mb=cache_mb, augment=augment, ray=ray, candidates=candidates,
                             candidate_cpus=1.0 if candidate_cpus is None else candidate_cpus,
                             candidate_gpus=0.0 if candidate_gpus is None else candidate_gpus,
                             input_shapes=input_shapes, layout=layout, purify=purify, purify_tolerance=purify_tolerance,
                             round_to=round_to, admm=admm, rpc=rpc, tracker=tracker, key=key,
                             tune_db=str(tune_db) if tune_db else None,
                             latency_cache=str(latency_cache) if latency_cache else None, latency_check=latency_check,
                             keep_best=keep_best, **recipe)
    return compile_model(model, data, output, options, log=log)


def _training_recipe(distill_weight, temperature, admm: str, admm_mode: str = "proximal", schedule: str = "cosine",
                     warmup: float = 0.0, recover_cut: int = CUT_RECOVERY_IMAGES, feature_distill: float | None = None) -> dict:
    """The objective's and the schedule's options, checked (one-line errors); None: the defaults."""
    from acc.errors import InputError
    from acc.prune.feature_distill import DEFAULT_FEATURE_DISTILL, FEATURE_DISTILL_MAX
    from acc.prune.objective import DEFAULT_DISTILL_WEIGHT, DISTILL_TEMPERATURE, check_distillation
    from acc.prune.schedule import ADMM_MODES, SCHEDULES

    distill_weight = DEFAULT_DISTILL_WEIGHT if distill_weight is None else float(distill_weight)
    temperature = DISTILL_TEMPERATURE if temperature is None else float(temperature)
    check_distillation(distill_weight, temperature)
    if admm not in ADMM_MODES:
        raise InputError(f"--admm takes one of {', '.join(ADMM_MODES)}, got '{admm}'")
    if admm_mode not in ("proximal", "penalty"):
        raise InputError(f"the ADMM W-step is 'proximal' or 'penalty', got '{admm_mode}'")
    if schedule not in SCHEDULES:
        raise InputError(f"--schedule takes one of {', '.join(SCHEDULES)}, got '{schedule}'")
    if not 0 <= warmup < 1:
        raise InputError(f"--warmup is a share of the fine-tuning steps in [0, 1), got {warmup}")
    if isinstance(recover_cut, bool) or int(recover_cut) != recover_cut or recover_cut < 0:
        raise InputError(f"--recover-cut takes a number of training images, 0 or more (0: no refit after the cut), got {recover_cut}")
    feature_distill = DEFAULT_FEATURE_DISTILL if feature_distill is None else float(feature_distill)
    if not 0 <= feature_distill <= FEATURE_DISTILL_MAX:
        raise InputError(f"--feature-distill is the weight of the intermediate-feature term, in [0, {FEATURE_DISTILL_MAX:g}] "
                         f"(0: off), got {feature_distill}")
    return {"distill_weight": distill_weight, "temperature": temperature, "recover_cut": int(recover_cut),
            "feature_distill": feature_distill}


def _search_starts(starts) -> tuple:
    """--search-starts: a comma-separated list (or sequence) of uniform, l1, bn, none repeated."""
    from acc.errors import InputError

    names = [s.strip() for s in (starts.split(",") if isinstance(starts, str) else starts)]
    known = ("uniform", "l1", "bn")
    if not names or any(n not in known for n in names) or len(set(names)) != len(names):
        raise InputError(f"--search-starts takes a list of {', '.join(known)} without repeats, got '{','.join(names)}'")
    return tuple(names)


def _check_purify_tolerance(tolerance: float) -> None:
    from acc.errors import InputError

    if not tolerance >= 0:
        raise InputError(f"--purify-tolerance must be 0 or more (a relative loss increase, 0.001 = 0.1 %), got {tolerance}")


def build(model: str | os.PathLike, target: str | None = "host", output: str | os.PathLike | None = None, **options):
    """`acc build`: compile with TVM into one shared library (+ JSON). Returns a BuildResult."""
    from acc.backends.compile import build as _build

    return _build(model, target, output, **options)


def bench(model: str | os.PathLike, **options):
    """`acc bench`: check against onnxruntime, then time (host or TVM RPC). Returns a BenchResult."""
    from acc.backends.bench import bench as _bench

    return _bench(model, **options)
