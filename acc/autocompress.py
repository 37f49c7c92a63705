"""`acc compile`: the whole AutoCompress pipeline, reaching `--rate` progressively.

Round k of N aims at R^(k/N) fewer parameters (dense or non-zero) or FLOPs than the input: simulated-annealing search
for the per-group rates on the current model, then ADMM with those rates, purification, masked
fine-tuning, and the physically smaller, verified graph the next round starts from.

Everything a run makes lives under OUTDIR/state/round<k>/ and is written atomically; a killed run
given --resume skips finished rounds, continues the search from its last step and ADMM from its
last epoch. The final model, report.json, report.md and the plots go to OUTDIR; with --target,
the TVM library of the final model too.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import onnx

from acc import atomic
from acc.backends import latency_device
from acc.data.splits import reuse_decoded
from acc.errors import AccError, InputError
from acc.passes.analysis import analyze
from acc.passes.counting import count
from acc.passes.importer import normalize
from acc.passes.load import load_model
from acc.prune import distributed
from acc.prune.admm import TrainConfig, divergence_lines
from acc.prune.cost import METRICS
from acc.prune.latency_goal import meet_goal, settle_starts
from acc.prune.objective import DEFAULT_DISTILL_WEIGHT, DISTILL_TEMPERATURE, choose_supervision, output_kinds
from acc.prune.posttrain import CUT_RECOVERY_IMAGES
from acc.prune.schedule import choose_admm, lr_for_rate
from acc.prune.pipeline import PruneOptions, load_training_data, prune, resolve_input
from acc.prune.rates import Rates, check_round_to, layer_schemes
from acc.prune.scoring import RayCluster, ScorerInputs, candidate_layout, open_scoring
from acc.prune.search import (Annealer, Guidance, OneShotScorer, SearchConfig, cost_model, default_order_by, fit_budget,
                              max_reduction, round_pass_cost, to_rates)


def parse_rate(text: str | float) -> float:
    """'30x', '30' -> 30.0; '96.7%' (removed) -> 1 / (1 - 0.967). Must be > 1."""
    value = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(x|%)?", value)
    if not m:
        raise InputError(f"--rate takes a reduction like 30x, 30 or 96.7% (removed), got '{text}'")
    number = float(m.group(1))
    if m.group(2) == "%":
        if not 0 < number < 100:
            raise InputError(f"--rate as a percentage removed must be in (0, 100), got {number}%")
        number = 1.0 / (1.0 - number / 100.0)
    if number <= 1.0:
        raise InputError(f"--rate must be more than 1x (fewer parameters than the input), got {text}")
    return number


@dataclass
class CompileOptions:
    rate: float
    metric: str = "params"
    rounds: int = 3
    budget_epochs: int = 4  # training epochs per round: half ADMM, half masked fine-tuning
    labels: bool | None = None
    seed: int = 0
    resume: bool = False
    limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 128
    lr: float | None = None  # None: lr_for_rate(rate)
    device: str = "cpu"
    progress: bool = True
    search: SearchConfig = field(default_factory=SearchConfig)
    target: str | None = None  # TVM target for the library (and --metric latency), or "onnxruntime"
    tune_trials: int = 0
    tune_db: str | None = None  # MetaSchedule database root (None: ~/.cache/acc/tune, used only with tune_trials)
    rpc: str | None = None  # the device of --target: an RPC server, or a tracker and key
    tracker: str | None = None
    key: str | None = None
    latency_cache: str | None = None  # layer-time cache folder (None: ~/.cache/acc/latency)
    latency_check: bool = True  # time the original and the result side by side at the end (report's latency)
    strategy: str = "anneal"  # or "uniform": one rate for every group (the baseline the search must beat)
    workers: int | None = None  # data loader processes (None: acc.data.stream.default_workers)
    cache_mb: float = 1024.0  # decode the data into memory when it fits, else stream it
    augment: str | None = None  # augmentation preset (None: the preprocess JSON's, else by input size)
    ray: str | None = None  # score the search's candidates on Ray: "local" (start a cluster here) or an address
    candidates: int | None = None  # per search step; None: search.candidates, or with ray what the cluster holds
    candidate_cpus: float = 1.0  # per Ray worker
    candidate_gpus: float = 0.0  # per Ray worker (fractions share a GPU)
    purify: bool = True  # near-zero purification after each round's fine-tuning (acc.prune.purify)
    purify_tolerance: float = 1e-3  # relative validation-loss increase it may cost
    input_shapes: dict[str, list[int]] | None = None  # --input-shape (resolved: the shape every round works at)
    layout: str | None = None  # NCHW or NHWC (resolved from the preprocess JSON or the input's shape)
    round_to: int | None = 1  # kept channel counts are multiples of this (--round-to; acc.prune.cost.kept_channels);
    # None: LATENCY_ROUND_TO with the latency metric (where the widest group allows), else 1
    admm: str = "auto"  # --admm auto|on|off (acc.prune.schedule.choose_admm)
    distill_weight: float = DEFAULT_DISTILL_WEIGHT  # with labels: (1 - a) * cross-entropy + a * distillation
    temperature: float = DISTILL_TEMPERATURE
    recover_cut: int = CUT_RECOVERY_IMAGES  # training images for the refit right after each round's hard prune (0: none)
    keep_best: bool = True  # fine-tuning ends on its lowest-validation-loss state (acc.prune.admm.TrainConfig)
    feature_distill: float = 0.0  # intermediate-feature distillation's weight (acc.prune.feature_distill; 0: off)


@dataclass
class CompileResult:
    out_dir: Path
    model_path: Path
    report: dict
    library: Path | None = None


def _fingerprint(model_path, data, options: CompileOptions) -> dict:
    o = asdict(options)
    volatile = ["resume", "progress", "tune_trials", "workers", "ray", "candidates", "candidate_cpus", "candidate_gpus",
                "rpc", "tracker", "key", "latency_cache", "latency_check", "tune_db"]
    if options.metric != "latency":  # the target is what the latency metric counts; else only the build's
        volatile.append("target")
    for name in volatile:
        o.pop(name)
    o["search"].pop("candidates")  # where and how widely candidates are scored: a resumed run may change it
    return {"model": str(Path(model_path).resolve()), "data": str(Path(data).resolve()), "options": o}


class _SearchProgress:
    def __init__(self, enabled, round_index, rounds):
        self.enabled, self.bar, self.desc = enabled, None, f"search {round_index}/{rounds}"

    def __call__(self, step, steps, temperature, energy, best):
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=steps, desc=self.desc, unit="candidate", initial=step - 1)
        self.bar.set_postfix({"T": f"{temperature:.0f}", "E": f"{energy:.0f}", "best": f"{best:.0f}"}, refresh=False)
        self.bar.update(1)
        if step >= steps:
            self.bar.close()


def compile_model(model_path, data, out_dir, options: CompileOptions, log=print) -> CompileResult:
    with ExitStack() as resources:  # what the run opens on the way (a Ray cluster) is closed at its end
        resources.enter_context(reuse_decoded())  # every round reads the same images: decode them once
        return _compile_model(model_path, data, out_dir, options, log, resources)


def _compile_model(model_path, data, out_dir, options: CompileOptions, log, resources: ExitStack) -> CompileResult:
    started = time.time()
    if options.metric not in METRICS:
        raise InputError(f"--metric must be one of {', '.join(METRICS)}")
    if options.strategy not in ("anneal", "uniform"):
        raise InputError("strategy must be 'anneal' or 'uniform'")
    if options.rounds < 1:
        raise InputError("--rounds must be at least 1")
    if options.lr is not None and not options.lr > 0:
        raise InputError(f"--lr must be a positive learning rate, got {options.lr}")
    chosen_lr = options.lr is None
    if chosen_lr:
        options = replace(options, lr=lr_for_rate(options.rate))
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        raise InputError(f"output folder's parent does not exist: {out_dir.parent}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path exists and is not a folder: {out_dir}")
    if chosen_lr:
        log(f"learning rate {options.lr:g} for --rate {options.rate:g}x (--lr sets it)")
    loaded = load_model(model_path)
    image = resolve_input(loaded, model_path, options.layout, options.input_shapes)
    options = replace(options, input_shapes=image.shapes, layout=image.layout)
    original = normalize(loaded, image.shapes)
    analysis = analyze(original)
    if options.round_to is None:
        options = replace(options, round_to=default_round_to(analysis, options.metric))
        if options.round_to > 1:
            log(f"latency metric: kept widths are multiples of {options.round_to}, the widths its table times "
                "(--round-to 1 allows any)")
    check_round_to(analysis, options.round_to)
    options = replace(options, search=replace(options.search, round_to=options.round_to))
    device = latency_device.check(options.target, options.rpc, options.tracker, options.key, options.metric,
                                  options.tune_trials, options.tune_db)
    if not Path(data).exists():
        raise InputError(f"dataset not found: {data}")
    # Every rank of a multi-process run trains each round; rank 0 alone searches, writes and reports.
    world = distributed.setup(options.device)
    if not world.is_main:
        log = _silent
    latency_for = None
    if options.metric == "latency" and world.is_main:
        latency_device.tune_original(model_path, device, options.input_shapes, log)
        timer = latency_device.open_timer(device, options.latency_cache, log)
        resources.callback(lambda: setattr(timer, "session", None))  # the device is free for others after the run
        latency_for = _latency_models(timer, options.round_to, log)
    cost = cost_model(analysis, options.metric, options.round_to, latency_for(analysis) if latency_for else None)
    reachable = max_reduction(analysis, options.metric, options.search, cost.latency_model) \
        if options.metric != "latency" or latency_for else float("inf")
    if options.rate > reachable:
        raise InputError(f"--rate {options.rate:g}x is out of reach for this graph: the most it can reach is "
                         f"{reachable:.1f}x {'faster' if options.metric == 'latency' else 'fewer ' + options.metric} (every prunable group"
                         f"{' and column layer' if options.metric == 'nonzero' else ''} at {options.search.max_rate:.0%}"
                         f"{f', widths multiples of {options.round_to}' if options.round_to > 1 else ''})")
    cluster = None
    if options.ray and world.is_main and options.strategy == "anneal":  # rank 0 alone searches; a dead address
        # is refused before anything is written
        cluster = RayCluster.connect(options.ray, options.candidate_cpus, options.candidate_gpus)
        resources.callback(cluster.close)
    state_dir = out_dir / "state"
    fingerprint = _fingerprint(model_path, data, options)
    if options.resume:
        saved = state_dir / "run.json"
        if not saved.is_file():
            raise InputError(f"nothing to resume in {out_dir} (no state/run.json)")
        if json.loads(saved.read_text()) != json.loads(json.dumps(fingerprint)):
            raise InputError("--resume: the model, data or options differ from the run being resumed")
    world.barrier()  # every rank has read the old state before rank 0 replaces it
    if world.is_main:
        if not options.resume:
            shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(state_dir / "run.json", json.dumps(fingerprint, indent=2))
    world.barrier()

    total = cost.total(options.metric) if world.is_main or options.metric != "latency" else 0.0
    current = Path(model_path)
    rounds = []
    for k in range(1, options.rounds + 1):
        round_dir = state_dir / f"round{k}"
        round_dir.mkdir(exist_ok=True)
        done = round_dir / "round.json"
        if options.resume and done.is_file():
            rounds.append(json.loads(done.read_text()))
            current = round_dir / "model.onnx"
            log(f"round {k}/{options.rounds}: done before, skipped")
            continue
        goal = total / options.rate ** (k / options.rounds)
        # The test split is the same in every round: the last round's result is this one's input.
        known_test = (rounds[-1]["accuracy_after"].get("test") or {} if world.is_main else {}) if k > 1 else None
        record = _run_round(k, current, model_path, data, goal, options, round_dir, log, cluster, latency_for,
                            known_test, timer.time_models if latency_for is not None else None)
        current = round_dir / "model.onnx"
        if not world.is_main:
            continue
        atomic.write_text(done, json.dumps(record, indent=2, default=float))
        rounds.append(record)

    final_path = out_dir / "model.onnx"
    if not world.is_main:
        return CompileResult(out_dir, final_path, {})
    atomic.write_bytes(final_path, current.read_bytes())
    final = normalize(load_model(final_path), options.input_shapes)  # counted at the shape the run worked at
    report = _report(model_path, original, final, rounds, options, started)
    report["input"] = {**image.to_json(), "free_dims": rounds[-1]["prune"].get("input", {}).get("free_dims")}
    report["world_size"] = world.size
    if latency_for is not None:
        timer.session = None  # measuring below opens its own session to the device
    if options.latency_check or device is not None:
        try:
            measured = latency_device.measure(model_path, final_path, device, latency_target=options.metric == "latency",
                                              log=log)
        except AccError as err:  # hours of training are not lost to a timing failure: the report says it
            log(f"warning: the latency measurement failed: {err}")
            measured = {"error": str(err)}
        report["latency"] = {**measured, **_latency_prediction(rounds, options, total)}
    library = None
    if options.target and options.target != latency_device.ONNXRUNTIME:
        from acc.backends.compile import build

        built = build(final_path, options.target, out_dir / "model.so", tune_trials=options.tune_trials,
                      tune_db=options.tune_db, log=log, input_shapes=options.input_shapes)  # the shape the run worked at, where the model's dims are free
        library = built.library
        report["library"] = {"path": str(library), "metadata": str(built.metadata), "target": built.target,
                             "seconds": built.seconds}
    from acc.report import write_report

    write_report(out_dir, report)
    return CompileResult(out_dir, final_path, report, library)


def _silent(*args, **kwargs) -> None:
    pass


LATENCY_ROUND_TO = 8  # NEON holds 4 floats, AVX2 8, AVX-512 16: 8 lines up with most CPU kernels


def default_round_to(analysis, metric: str) -> int:
    """--round-to when not given: LATENCY_ROUND_TO for the latency metric, where a group is that wide."""
    widest = max((g.width for g in analysis.prunable_groups), default=0)
    return LATENCY_ROUND_TO if metric == "latency" and widest >= LATENCY_ROUND_TO else 1


def _latency_models(timer, round_to: int, log):
    """analysis -> its LatencyModel, timed with `timer` (layer times are cached across rounds)."""
    from acc.prune.latency_cost import build_latency_model

    built: dict[str, object] = {}

    def latency_for(analysis):
        # round 1 analyses the model the run started from: its model is the one already timed
        digest = hashlib.sha256(analysis.model.SerializeToString()).hexdigest()
        if digest not in built:
            built[digest] = build_latency_model(analysis, timer.time_layers, timer.time_models, round_to,
                                                timer.describe(), log)
        return built[digest]

    return latency_for


def _latency_prediction(rounds: list[dict], options: CompileOptions, total: float) -> dict:
    """What the search aimed at and predicted, next to the measured figures (metric latency only)."""
    if options.metric != "latency" or not rounds:
        return {}
    last = rounds[-1]
    return {"goal_ms": total / options.rate, "predicted_ms": last.get("latency_predicted_ms"),
            "table_ms": total, "table": last.get("latency_table")}


def _run_round(k, current: Path, original_path, data, goal, options: CompileOptions, round_dir: Path, log,
               cluster: RayCluster | None = None, latency_for=None, known_test: dict | None = None,
               time_models=None) -> dict:
    started = time.time()
    model = normalize(load_model(current), options.input_shapes)
    analysis = analyze(model)
    latency = latency_for(analysis) if latency_for else None
    cost = cost_model(analysis, options.metric, options.round_to, latency)
    if options.metric != "latency" or latency is not None:
        unit = " ms" if options.metric == "latency" else ""
        before = cost.total(options.metric)
        log(f"round {k}/{options.rounds}: {options.metric} {before:,.{3 if unit else 0}f}{unit} -> "
            f"{goal:,.{3 if unit else 0}f}{unit}")
    choice = choose_admm(options.admm, max(1, options.budget_epochs // 2),
                         max(1, options.budget_epochs - options.budget_epochs // 2))
    if choice["method"] == "one-shot" and k == 1:
        log(f"ADMM: {choice['reason']}")
    config = TrainConfig(admm_epochs=choice["admm_epochs"], admm_iters=4, finetune_epochs=choice["finetune_epochs"],
                         batch_size=options.batch_size, lr=options.lr, finetune_lr=options.lr, seed=options.seed + k,
                         keep_best=options.keep_best, feature_distill=options.feature_distill)
    prune_options = PruneOptions(rates=Rates(), train=config, labels=options.labels, limit=options.limit,
                                 test_limit=options.test_limit, checkpoint=round_dir / "admm.ckpt",
                                 resume=options.resume and (round_dir / "admm.ckpt").is_file(), progress=options.progress,
                                 device=options.device, preprocess_model=original_path, teacher_model=original_path,
                                 workers=options.workers, cache_mb=options.cache_mb, augment=options.augment,
                                 input_shapes=options.input_shapes, layout=options.layout,
                                 purify=options.purify, purify_tolerance=options.purify_tolerance,
                                 round_to=options.round_to, distill_weight=options.distill_weight,
                                 temperature=options.temperature, admm_choice=choice,
                                 recover_cut=options.recover_cut, test_before=known_test)
    world = distributed.current()
    searched = _search(k, model, analysis, cost, current, data, goal, options, prune_options, round_dir,
                       cluster, time_models, log) if world.is_main else None
    if searched is not None and latency is not None and time_models is not None:
        searched = _meet_latency_goal(analysis, cost, searched, goal, options, round_dir, time_models, log)
    rates, search_trace = world.broadcast(searched)
    prune_options.rates = to_rates(cost, rates)
    result = prune(current, data, prune_options)
    if world.is_main:
        atomic.write_bytes(round_dir / "model.onnx", result.model.SerializeToString())
    world.barrier()  # the next round starts from this model on every rank
    if not world.is_main:
        return None
    r = result.report
    for line in divergence_lines(r["history"], config):
        log(f"round {k}: {line}")
    group_rates, column_rates = cost.split(rates)
    measured = {}
    if latency is not None:
        measured = {"latency_predicted_ms": cost.measure(rates, "latency"), "latency_table": {
            **latency.how, "layers": len(latency.nodes), "model_ms": latency.measured_ms, "half_ms": latency.half_ms,
            "scale": latency.scale, "fixed_ms": latency.fixed_ms,
            "nodes": latency.node_table()}}
    return {**measured,
        "round": k, "goal": goal, "metric": options.metric,
        "rates": {name: float(x) for name, x in zip(cost.names, group_rates)},
        "column_rates": {name: float(x) for name, x in zip(cost.column_names, column_rates)},
        "layers": layer_schemes(analysis, prune_options.rates),
        "search": search_trace, "prune": r,
        "params_after": r["params"]["after_dense"], "nonzero_after": r["params"]["after_nonzero"],
        "flops_after": r["flops"]["after"],
        "accuracy_after": r["accuracy_after"], "seconds": time.time() - started,
        "prune_seconds": r.get("seconds"),
    }


def _meet_latency_goal(analysis, cost, searched, goal, options, round_dir: Path, time_models, log):
    """The search's choice timed whole and moved onto the goal (acc.prune.latency_goal). Kept in the
    round's state: a resumed round trains the widths it was training, not a new timing's."""
    saved = round_dir / "latency_goal.json"
    if options.resume and saved.is_file():
        data = json.loads(saved.read_text())
        rates, record = np.array(data["rates"], dtype=float), data["record"]
    else:
        guidance = Guidance(analysis, cost, options.search)  # unordered rescaling: the order is not used
        rates, record = meet_goal(analysis, cost, guidance, searched[0], goal, time_models, log)
        atomic.write_text(saved, json.dumps({"rates": [float(r) for r in rates], "record": record}, default=float))
    return rates, {**searched[1], "latency_goal": record}


def _search(k, model, analysis, cost, current, data, goal, options, prune_options, round_dir, cluster=None,
            time_models=None, log=print):
    started = time.time()
    candidates = options.candidates or (cluster.capacity if cluster is not None else options.search.candidates)
    search_cfg = SearchConfig(**{**asdict(options.search), "seed": options.seed * 1000 + k, "candidates": candidates})
    if search_cfg.order_by is None:
        search_cfg = replace(search_cfg, order_by=default_order_by(options.metric))
    if options.strategy == "uniform":
        rates = Guidance(analysis, cost, search_cfg).uniform(goal, options.metric)
        return rates, {"strategy": "uniform", "trace": [], "best_energy": None, "evaluated": 0, "config": asdict(search_cfg),
                       "seconds": time.time() - started, "setup_seconds": 0.0}
    # The round trains a model pruned to about the goal: what share of the FLOPs uniform rates keep there.
    flops_share = cost.measure(Guidance(analysis, cost, search_cfg).uniform(goal, options.metric), "flops") / cost.total("flops")
    inputs = scorer_inputs(model, analysis, current, data, prune_options, search_cfg, options.labels, cost,
                           budget_epochs=options.budget_epochs, flops_share=flops_share, device=options.device)
    search_cfg = inputs.config  # fitted to the search's share of the round
    scoring = open_scoring(inputs, cost, options.device, cluster)
    setup_seconds = time.time() - started
    try:
        guidance = Guidance(analysis, cost, search_cfg)
        # the latency metric's starts are timed whole before they are scored (latency_goal.settle_starts)
        settle = partial(settle_starts, analysis, cost, guidance, goal=goal, time_models=time_models,
                         log=log) if cost.latency_model is not None and time_models is not None else None
        annealer = Annealer(guidance, scoring, goal, options.metric, search_cfg, checkpoint=round_dir / "search.json",
                            progress=_SearchProgress(options.progress, k, options.rounds), settle=settle)
        if options.resume:
            annealer.resume()
        best = annealer.run()
    finally:
        scoring.close()
    trace = {"trace": annealer.state.trace, "best_energy": annealer.state.best_energy,
             "evaluated": len(annealer.state.cache), "confirmation": annealer.state.confirmation,
             "start": {"chosen": annealer.state.start_kind, "energies": annealer.state.start_energies,
                       "settled": annealer.state.settled},
             "budget": inputs.budget,
             "config": asdict(search_cfg), "scoring": scoring.describe(),
             "seconds": time.time() - started, "setup_seconds": setup_seconds}
    return best, trace


def build_scorer(model, analysis, model_path, data, prune_options: PruneOptions, search_cfg: SearchConfig,
                 labels: bool | None, device: str, cost=None) -> OneShotScorer:
    """The search's energy on `model`, in this process (see scorer_inputs)."""
    return scorer_inputs(model, analysis, model_path, data, prune_options, search_cfg, labels, cost).build(device)


def scorer_inputs(model, analysis, model_path, data, prune_options: PruneOptions, search_cfg: SearchConfig,
                  labels: bool | None, cost=None, budget_epochs: float | None = None, flops_share: float = 1.0,
                  device: str = "cpu") -> ScorerInputs:
    """What the search's energy on `model` is built from, in memory: validation, BN-calibration and
    fine-tune samples carved from the round's training data (the validation part is never trained
    on). The fine-tune sample is the `finetune_steps x finetune_batch` images the steps go through
    once, the same for every candidate wherever it is scored. With `budget_epochs` (the round's
    training epochs) the search is first fitted to its share of the round (search.fit_budget), whose
    pruned model keeps `flops_share` of the FLOPs and trains on `device`; the fitted config is the
    inputs' config."""
    c = search_cfg
    input_shape = analysis.index.shape(analysis.index.input_names[0])
    train, val, _, _ = load_training_data(data, model_path, prune_options, input_shape)
    kinds = output_kinds(model)
    use_labels, needs_teacher = choose_supervision(kinds, train.labels is not None, labels)
    budget = None
    if budget_epochs is not None:  # whether the round itself runs the teacher (its distillation weight)
        taught = choose_supervision(kinds, train.labels is not None, labels, prune_options.distill_weight)[1]
        c, budget = fit_budget(c, len(train), budget_epochs, round_pass_cost(flops_share, taught, device))
    teacher = None
    if needs_teacher:
        teacher = normalize(load_model(prune_options.teacher_model or model_path), prune_options.input_shapes).SerializeToString()
    fine_tune = None
    if c.finetune_steps > 0:
        fine_tune = _in_memory(train.sample(c.finetune_steps * c.finetune_batch, seed=c.seed + 2))
    return ScorerInputs(model=model.SerializeToString(), teacher=teacher, use_labels=use_labels,
                        val=_in_memory(val.sample(c.eval_images, seed=c.seed)),
                        calibration=_in_memory(train.sample(128 * c.bn_batches, seed=c.seed + 1)),
                        train=fine_tune, config=c, columns=dict(cost.column_weights) or None if cost is not None else None,
                        budget=budget, channels_last=candidate_layout(model, fine_tune, device))


def _in_memory(data):
    return getattr(data, "in_memory", lambda: data)()


def search_cost(rounds: list[dict], seconds: float) -> dict:
    """What the search cost: seconds (setup: the scorer's data and model) per round and in all, and
    their share of the round's and of the run's wall time."""
    per_round = []
    for r in rounds:
        s = r.get("search") or {}
        spent = s.get("seconds") or 0.0
        per_round.append({"round": r["round"], "seconds": spent, "setup_seconds": s.get("setup_seconds") or 0.0,
                          "evaluated": s.get("evaluated", 0), "round_seconds": r["seconds"],
                          "share": spent / r["seconds"] if r["seconds"] else None})
    total = sum(x["seconds"] for x in per_round)
    return {"seconds": total, "setup_seconds": sum(x["setup_seconds"] for x in per_round),
            "run_seconds": seconds, "share": total / seconds if seconds else None, "per_round": per_round}


def _report(model_path, original: onnx.ModelProto, final: onnx.ModelProto, rounds, options, started) -> dict:
    c0, c1 = count(original), count(final)
    first, last = rounds[0]["prune"], rounds[-1]["prune"]
    a0, a1 = analyze(original), analyze(final)
    widths_after = {g.name: g.width for g in a1.groups}
    return {
        "model": str(model_path),
        "rate_requested": options.rate, "metric": options.metric, "rounds": len(rounds),
        "accuracy_before": first["accuracy_before"], "accuracy_after": last["accuracy_after"],
        "params": {"before": c0.params, "after_dense": c1.params, "after_nonzero": c1.nonzero_params,
                   "reduction_dense": c0.params / max(c1.params, 1), "reduction_nonzero": c0.params / max(c1.nonzero_params, 1)},
        "flops": {"before": c0.flops, "after": c1.flops, "reduction": c0.flops / max(c1.flops, 1)},
        "widths": [{"group": g.name, "before": g.width, "after": widths_after.get(g.name)} for g in a0.groups],
        "per_round": [{"round": r["round"], "goal": r["goal"], "params_after": r["params_after"],
                       "nonzero_after": r.get("nonzero_after"), "flops_after": r["flops_after"],
                       "accuracy_after": r["accuracy_after"], "rates": r["rates"],
                       "column_rates": r.get("column_rates", {}), "layers": r.get("layers", []),
                       "seconds": r["seconds"]} for r in rounds],
        "search": [r["search"] for r in rounds],
        "search_cost": search_cost(rounds, time.time() - started),
        "rounds_detail": [r["prune"] for r in rounds],
        "options": json.loads(json.dumps(asdict(options), default=str)),
        "seconds": time.time() - started,
    }
