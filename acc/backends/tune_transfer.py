"""Seed untuned tasks with the schedules tuned for the same op at another width.

Channel pruning changes a conv's task only in its shape constants: conv2d 64->64 becomes
64->45 with the same blocks, loops, index arithmetic (strides, padding) and epilogue. A tuning
record is a trace of schedule primitives over those blocks and loops, so the trace tuned for the
nearest width replays on the new one once the tile sizes it sampled are refitted. A
SamplePerfectTile decision f_1..f_n must multiply to the loop's extent; for a new extent E,
from the innermost factor out:

    g_i = the largest divisor of E / (g_{i+1} ... g_n) that is <= f_i  (f_i itself if it divides)
    g_1 = what is left of E

Every other decision (unroll depth, compute location, ...) is kept. The replayed schedule gets
the target's postprocessors, is built and measured like a MetaSchedule trial, and the measured
schedules are committed as the new workload's records: a build with no trials uses the best,
and a search with trials starts from them (EvolutionarySearch draws part of its first
population from the database's top records of the workload).

Two workloads are the same op at other widths when their TVMScript is the same text once every
number is blanked and the numbers inside the block bodies (strides, padding offsets, constant
indices) are equal: only buffer shapes and loop extents differ. The nearest is the one with
the least sum of |log(a/b)| over those.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import types
from dataclasses import dataclass

_NUMBER = re.compile(r"\b\d+\b")
# Lines whose numbers are shapes: buffer declarations, loop extents, block iterator domains.
_SHAPE_LINES = ("T.Buffer(", "alloc_buffer(", " in T.grid(", " in range(", "T.axis.", "T.serial(", "T.parallel(")
# Lines derived from the others (access regions) or without meaning (comments).
_SKIPPED_LINES = ("T.reads(", "T.writes(", "#")


@dataclass(frozen=True)
class Signature:
    """A PrimFunc module's shape-free identity (`family`) and its shapes (`extents`)."""

    family: tuple
    extents: tuple[int, ...]

    @classmethod
    def of(cls, mod) -> Signature:
        text = _positional_params(mod.script())
        attrs, extents = [], []
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith(_SKIPPED_LINES):
                continue
            numbers = [int(n) for n in _NUMBER.findall(line)]
            (extents if any(m in line for m in _SHAPE_LINES) else attrs).extend(numbers)
        return cls((re.sub(r"\d+", "#", text), tuple(attrs)), tuple(extents))

    def distance(self, other: Signature) -> float:
        """Sum of |log(a/b)| over the shapes; inf for another op."""
        if self.family != other.family or len(self.extents) != len(other.extents):
            return math.inf
        return sum(abs(math.log(max(a, 1) / max(b, 1))) for a, b in zip(self.extents, other.extents))


def _positional_params(text: str) -> str:
    """The script with the PrimFunc's buffer parameters renamed by position: the same conv imported
    from a model (weights named after initializers) and alone (weights as inputs) is one op."""
    head = next((line for line in text.splitlines() if line.strip().startswith("def ")), "")
    for i, name in enumerate(re.findall(r"(\w+): T\.Buffer", head)):
        text = re.sub(rf"\b{re.escape(name)}\b", f"acc_param_{i}", text)
    return text


def refit_tile(factors: list[int], extent: int) -> list[int]:
    """A perfect tiling of `extent` close to `factors` (a perfect tiling of another extent)."""
    new, rest = [1] * len(factors), extent
    for i in range(len(factors) - 1, 0, -1):
        new[i] = max(d for d in range(1, min(factors[i], rest) + 1) if rest % d == 0)
        rest //= new[i]
    new[0] = rest
    return new


def tuned_workloads(database) -> list[tuple[Signature, list]]:
    """Each tuned workload of `database`: its signature and its measured records, fastest first."""
    import tvm_ffi

    by_workload: dict[int, list] = {}
    for record in database.get_all_tuning_records():
        if record.run_secs and _mean(record.run_secs) < 1e9:
            by_workload.setdefault(tvm_ffi.structural_hash(record.workload.mod), []).append(record)
    return [(Signature.of(records[0].workload.mod), sorted(records, key=lambda r: _mean(r.run_secs)))
            for records in by_workload.values()]


def neighbour_traces(mod, tuned: list[tuple[Signature, list]], limit: int = 3) -> list:
    """The traces of the best records of the nearest tuned workload(s) of `mod`'s family, best first."""
    signature = Signature.of(mod)
    ranked = [(signature.distance(other), records) for other, records in tuned]
    ranked = sorted((item for item in ranked if item[0] < math.inf), key=lambda item: item[0])
    return [r.trace for _, records in ranked for r in records][:limit]


def replay(trace, mod, postprocs):
    """`trace` applied to `mod` with refitted tiles and `postprocs` after; None if it does not apply."""
    from tvm.s_tir.schedule import Schedule

    sch = Schedule(mod, seed=1, error_render_level="none")

    def decide(inst, inputs, attrs, decision):
        if inst.kind.name != "SamplePerfectTile" or decision is None:
            return decision
        factors = [int(f) for f in decision]
        extent = int(sch.get(inputs[0]).extent)
        return factors if math.prod(factors) == extent else refit_tile(factors, extent)

    try:
        trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=decide)
        sch.enter_postproc()
        if not all(p.apply(sch) for p in postprocs):
            return None
    except Exception:  # noqa: BLE001 - any schedule error means: not transferable, tune instead
        return None
    return sch


def seed(tasks, database, target, builder, runner, candidates: int = 3, tensor_intrin: bool = True) -> list[str]:
    """Commit transferred, measured records for the `tasks` whose neighbours are tuned.

    Returns the names of the tasks seeded. A task whose traces do not replay, build or run is
    left out (normal tuning covers it). `tensor_intrin=False` skips importing TVM's tensor
    intrinsics (~20 s) for targets whose postprocessors never use them.
    """
    tuned = tuned_workloads(database)
    trials = []  # (task, schedule)
    postprocs = None
    for task in tasks:
        mod = task.dispatched[0]
        try:
            traces = neighbour_traces(mod, tuned, candidates)
        except Exception:  # noqa: BLE001 - an unprintable workload has no neighbours
            continue
        if traces and postprocs is None:
            postprocs = _postprocs(mod, target, tensor_intrin)
        for trace in traces:
            sch = replay(trace, mod, postprocs)
            if sch is not None:
                trials.append((task, sch))
    return commit_measured(trials, database, target, builder, runner)


def commit_measured(trials, database, target, builder, runner) -> list[str]:
    """Measure each (task, schedule) of `trials` and commit those that ran as tuning records.

    Returns the names of the tasks that got at least one record, in order."""
    from tvm.s_tir import meta_schedule as ms

    committed: list[str] = []
    if not trials:
        return committed
    for (task, sch), run_secs in zip(trials, measure([sch for _, sch in trials], target, builder, runner)):
        if run_secs is None:
            continue
        workload = database.commit_workload(task.dispatched[0])
        args_info = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
        database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, run_secs, target, args_info))
        if task.task_name not in committed:
            committed.append(task.task_name)
    return committed


def _postprocs(mod, target, tensor_intrin: bool) -> list:
    """The postprocessors MetaSchedule applies to every trial for `target`."""
    from tvm.s_tir import meta_schedule as ms

    name = "tvm.s_tir.tensor_intrin"
    stub = not tensor_intrin and name not in sys.modules
    if stub:  # TuneContext imports the intrinsics; CPU postprocessors without them need none
        sys.modules[name] = types.ModuleType(name)
    try:
        if target.kind.name != "llvm":
            context = ms.TuneContext(mod, target=target, space_generator="post-order-apply", num_threads=1)
            return list(context.space_generator.postprocs)
        # The target's own defaults come with its schedule rules, which name its intrinsics (VNNI
        # on an AVX-512 CPU). Every llvm kind's postprocessors are these, less RewriteTensorize for
        # plain llvm, which leaves blocks without a tensorize annotation alone.
        context = ms.TuneContext(mod, target=target, num_threads=1)
        postprocs = [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteParallelVectorizeUnroll(),
                     ms.postproc.RewriteReductionBlock(), ms.postproc.RewriteTensorize(vectorize_init_loop=True),
                     ms.postproc.RewriteLayout()]
        for postproc in postprocs:
            postproc._initialize_with_tune_context(context)
        return postprocs
    finally:
        if stub:
            del sys.modules[name]


def measure(schedules, target, builder, runner) -> list[list[float] | None]:
    """Build and run `schedules` as MetaSchedule trials; the run times, or None where one failed."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    device = str(tvm.runtime.device(target.get_target_device_type(), 0)).rsplit(":", 1)[0]  # "cpu" for llvm
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for sch in schedules])
    inputs, positions = [], []
    for i, (sch, result) in enumerate(zip(schedules, built)):
        if result.error_msg is None and result.artifact_path:
            args_info = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
            inputs.append(ms.runner.RunnerInput(result.artifact_path, device, args_info))
            positions.append(i)
    times: list[list[float] | None] = [None] * len(schedules)
    try:
        for i, future in zip(positions, runner.run(inputs) if inputs else []):
            result = future.result()
            if result.error_msg is None and result.run_secs:
                secs = [float(s) for s in result.run_secs]
                times[i] = secs if _mean(secs) < 1e9 else None
    finally:
        for result in built:
            if result.artifact_path:
                shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)
    return times


def _mean(run_secs) -> float:
    secs = [float(s) for s in run_secs]
    return sum(secs) / len(secs)
