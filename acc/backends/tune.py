"""MetaSchedule tuning with a database that persists across runs and models.

Untuned CPU convs are naive loops; MetaSchedule schedules each fused task. The JSON database
lives in one folder per target (a schedule tuned for one CPU is no answer for another), and
tasks that already have records there are not tuned again: a second model sharing conv shapes
with the first only pays for its new workloads, and a new workload that is a tuned one at other
widths (a pruned conv) starts from its schedule (acc.backends.tune_transfer).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path

from acc.backends.targets import TargetSpec
from acc.errors import InputError

EXPORT_FUNC = "acc.backends.tune.export_cross"


def default_db_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "acc" / "tune"


def db_dir(db_root: str | os.PathLike | None, spec: TargetSpec) -> Path:
    """The database folder of this target under `db_root`."""
    target = spec.tvm_target()
    attrs = {k: str(v) for k, v in target.export().items() if k not in ("num-cores", "tag", "host")}
    digest = hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()[:10]
    cpu = str(target.attrs.get("mcpu", "")) or str(target.attrs.get("mtriple", "")) or "generic"
    return Path(db_root or default_db_root()) / f"{target.kind.name}-{cpu}-{digest}"


def _worker_init(stub_tensor_intrin: bool, cc: str | None) -> None:
    """Runs in every LocalBuilder worker before it builds."""
    if stub_tensor_intrin:
        # Importing the tensor intrinsics takes ~36 s per worker on 2 cores (past the builder's
        # timeout); plain fp32 llvm schedules never use them.
        sys.modules.setdefault("tvm.s_tir.tensor_intrin", types.ModuleType("tvm.s_tir.tensor_intrin"))
    if cc:
        import tvm

        def export_cross(mod) -> str:
            from tvm.support import cc as tvm_cc

            path = os.path.join(tempfile.mkdtemp(prefix="acc-ms-"), "tvm_tmp_mod.so")
            mod.export_library(path, fcompile=tvm_cc.cross_compiler(cc))
            return path

        # A remote device has no compiler to link the default .tar artifact: link here.
        tvm.register_global_func(EXPORT_FUNC, export_cross, override=True)


def plain_llvm(target) -> bool:
    """A CPU target whose schedules use no tensor intrinsics (plain fp32 llvm)."""
    return target.kind.name == "llvm" and not any(
        str(a).startswith(("+sve", "+sme", "+i8mm", "+avx512vnni", "+amx")) for a in target.attrs.get("mattr", [])
    )


def make_builder(spec: TargetSpec, cc: str | None, max_workers: int | None = None):
    from tvm.s_tir import meta_schedule as ms

    plain = plain_llvm(spec.tvm_target())
    init = functools.partial(_worker_init, plain, cc)
    return ms.builder.LocalBuilder(
        max_workers=max_workers, timeout_sec=30.0 if plain else 120.0,
        initializer=init, f_export=EXPORT_FUNC if cc else None,
    )


def make_runner(tracker: str | None, key: str | None, number: int = 3, repeat: int = 1):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=50, enable_cpu_cache_flush=False)
    if not tracker:
        return ms.runner.LocalRunner(evaluator_config=evaluator)
    if not key:
        raise InputError("--tracker needs --key (the device key the server registered with)")
    from acc.backends import rpc

    host, port = rpc.parse_hostport(tracker, "--tracker")
    rpc.connect(tracker=tracker, key=key)  # one-line error now rather than failed trials later
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key, session_timeout_sec=600)
    return ms.runner.RPCRunner(config, evaluator, max_workers=1)


@dataclass
class TuneReport:
    database: object
    db_dir: Path
    tasks: int
    reused: int
    tuned: int
    trials_per_task: int
    trials_global: int
    task_names: list[str] = field(default_factory=list)
    transferred: int = 0  # tasks seeded with a schedule tuned for another width
    defaults: int = 0  # tasks given acc's default schedule as a measured record

    def summary(self) -> dict:
        return {
            "db": str(self.db_dir), "tasks": self.tasks, "reused": self.reused, "transferred": self.transferred,
            "defaults": self.defaults,
            "tuned": self.tuned, "trials_per_task": self.trials_per_task, "trials_global": self.trials_global,
        }


def tune(
    mod,
    spec: TargetSpec,
    trials_per_task: int,
    db_root: str | os.PathLike | None = None,
    cc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    seed: int = 0,
    transfer: bool = True,
    log=print,
) -> TuneReport:
    """Tune the tasks of `mod` that the database has no record of; return the database.

    With `transfer`, such a task that is a tuned workload at other widths is first given that
    workload's schedule, refitted and measured: with no trials it is built with it, with trials
    the search starts from it.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks, extracted_tasks_to_tune_contexts

    import logging

    # MetaSchedule prints every task table to stdout; the per-task logs in work_dir keep them.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)
    # MetaSchedule rebuilds its logging config from the handlers' names on every run and fails
    # on an unnamed one (left by an earlier run under pytest): drop those.
    for handler in list(ms_logger.handlers):
        if handler.get_name() is None:
            ms_logger.removeHandler(handler)
    target = spec.tvm_target()
    folder = db_dir(db_root, spec)
    folder.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(folder))
    # Reshapes and reductions have a handful of schedules: MetaSchedule spends ~10 s per pick
    # finding nothing new for them, and the default schedule is as good. Tune the compute.
    from acc.backends.compile import fuse

    tasks = [t for t in extract_tasks(fuse(mod, target), target) if _worth_tuning(t.task_name)]
    searched = TaskLedger(folder, SEARCHED_TRIALS)
    # New tasks get records first (a transferred schedule, acc's default, both measured); with
    # trials, every task not yet searched with that many is searched, starting from its records.
    fresh = [t for t in tasks if not _has_record(database, t, target)]
    todo = [t for t in tasks if searched.get(t) < trials_per_task] if trials_per_task > 0 else fresh
    reused = len(tasks) - len(todo)
    trials_global = trials_per_task * len(todo)
    # Tasks whose default was measured with an older acc kernel get the current one measured too:
    # the build applies whichever record ran faster.
    default_versions = TaskLedger(folder, DEFAULT_SCHEDULE_VERSIONS)
    fresh_ids = {id(t) for t in fresh}
    stale = [t for t in tasks if id(t) not in fresh_ids and default_versions.get(t) < _default_version(target)]
    builder = runner = None
    seeded: list[str] = []
    if fresh or todo or stale:
        builder, runner = make_builder(spec, cc), make_runner(tracker, key)
    if fresh and transfer:
        from acc.backends import tune_transfer

        try:
            seeded = tune_transfer.seed(fresh, database, target, builder, runner, tensor_intrin=not plain_llvm(target))
        except Exception:  # noqa: BLE001 - a failed transfer only means: tune as before
            seeded = []
    defaults = seed_defaults(fresh + stale, database, target, builder, runner) if fresh or stale else []
    default_versions.raise_to(fresh + stale, _default_version(target))
    rest = (f"{len(todo)} to tune x {trials_per_task} trials" if trials_per_task > 0
            else "no trials")
    log(f"tuning: {len(tasks)} tasks, {reused} already in {folder}, {len(seeded)} seeded from tuned "
        f"neighbours, {len(defaults)} with acc's default schedule measured, {rest}")
    if todo and trials_per_task > 0:
        with tempfile.TemporaryDirectory(prefix="acc-tune-") as work_dir:
            contexts, weights = extracted_tasks_to_tune_contexts(todo, work_dir, seed=seed)
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=work_dir,
                max_trials_global=trials_global,
                max_trials_per_task=trials_per_task,
                num_trials_per_iter=min(64, trials_per_task),
                builder=builder,
                runner=runner,
                database=database,
            )
        searched.raise_to(todo, trials_per_task)
    return TuneReport(database, folder, len(tasks), reused, len(todo) if trials_per_task else 0, trials_per_task,
                      trials_global, [t.task_name for t in tasks], len(seeded), len(defaults))


SEARCHED_TRIALS = "acc_searched_trials.json"  # trials per task MetaSchedule has spent on it
DEFAULT_SCHEDULE_VERSIONS = "acc_default_schedules.json"  # cpu_schedule.VERSION last measured


class TaskLedger:
    """A number per workload of a database folder, kept beside MetaSchedule's files and keyed by
    structural hash: what a record alone does not say. Seeded records (transferred, acc's
    default) are measured schedules nobody searched from (`SEARCHED_TRIALS`); a default measured
    with an older acc kernel is worth measuring again (`DEFAULT_SCHEDULE_VERSIONS`)."""

    def __init__(self, folder: Path, name: str):
        self.path = Path(folder) / name
        try:
            self.counts = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.counts = {}

    @staticmethod
    def key(task) -> str:
        import tvm_ffi

        return str(tvm_ffi.structural_hash(task.dispatched[0]))

    def get(self, task) -> int:
        return int(self.counts.get(self.key(task), 0))

    def raise_to(self, tasks, value: int) -> None:
        if not tasks:
            return
        from acc.atomic import write_text

        for task in tasks:
            self.counts[self.key(task)] = max(self.get(task), value)
        write_text(self.path, json.dumps(self.counts, indent=1, sort_keys=True) + "\n")


def _default_version(target) -> int:
    from acc.backends import cpu_schedule

    return cpu_schedule.VERSION if target.kind.name == "llvm" else 0


def seed_defaults(tasks, database, target, builder, runner) -> list[str]:
    """Commit acc's default schedule (`cpu_schedule`) of each task as a measured record.

    Tuning then keeps its own schedule only where it measured faster, so a tuned build is never
    slower than the untuned one, and with few trials it keeps the default kernels it cannot beat.
    """
    if target.kind.name != "llvm":
        return []
    from acc.backends import cpu_schedule
    from acc.backends.tune_transfer import commit_measured

    scheduled = []
    for task in tasks:
        try:
            sch = cpu_schedule.schedule_func(task.dispatched[0]["main"], target)
        except Exception:  # noqa: BLE001 - a function no rule fits: MetaSchedule alone tunes it
            sch = None
        if sch is not None:
            scheduled.append((task, sch))
    return commit_measured(scheduled, database, target, builder, runner)


def _worth_tuning(task_name: str) -> bool:
    return any(op in task_name for op in ("conv", "matmul", "dense"))


def _has_record(database, task, target) -> bool:
    if not database.has_workload(task.dispatched[0]):
        return False
    return database.query_tuning_record(task.dispatched[0], target, task.task_name) is not None
