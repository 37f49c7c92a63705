"""The search's choice timed as a whole model before it is trained, and rescaled onto the goal.

The latency model predicts a candidate from layers timed alone and a line fitted on uniform cuts
(acc.prune.latency_cost). On the non-uniform candidate a search chooses it was 3-12 % optimistic
(ResNet-20 on TVM's host kernels): runs asked for 1.5x measured 1.38-1.40x. So before a round
trains, the chosen widths are built and timed on the same engine (untrained: weights do not change
the time), interleaved with the round's model at full width. When the time misses the goal by more
than TOLERANCE, the candidate is rescaled onto the prediction that would measure the goal (its
prediction x goal / measured) by scaling every group's kept fraction alike
(`Guidance.rescale_kept`); at most CORRECTIONS times. The candidate kept is the least cut of those
measured within the tolerance of the goal, else the fastest.
"""

from __future__ import annotations

import time

import numpy as np

from acc.passes.analysis import Analysis
from acc.passes.oneshot import kept_plan
from acc.passes.rewrite import rewrite
from acc.prune.cost import CostModel

TOLERANCE = 0.03  # about the spread of one timing of a small model on a quiet machine
CORRECTIONS = 2


def time_widths(analysis: Analysis, cost: CostModel, widths: list[tuple], time_models) -> tuple[list[float], list[float]]:
    """Models keeping each tuple of per-group widths (which channels is immaterial to the time),
    timed in one run beside the round's model at full width and read as fractions of its table
    time (the machine's drift since the table cancels). Returns the measured ms per widths and the
    raw timings (full width first)."""
    timed = time_models([analysis.model] + [rewrite(analysis, kept_plan(analysis, dict(zip(cost.names, w))))
                                            for w in widths])
    return [ms / timed[0] * cost.total("latency") for ms in timed[1:]], timed


def meet_goal(analysis: Analysis, cost: CostModel, guidance, rates: np.ndarray, goal: float, time_models,
              log=print) -> tuple[np.ndarray, dict]:
    """`rates` (the search's choice) moved so that the built model's measured milliseconds meet
    `goal`; `time_models(list[onnx.ModelProto]) -> list[ms]` times on the run's engine. Returns the
    rates kept and a record of every candidate timed (predicted and measured ms)."""
    started = time.monotonic()
    tried = []
    target = goal
    current = np.asarray(rates, dtype=float)
    for attempt in range(CORRECTIONS + 1):
        kept = [int(k) for k in cost.kept_counts(current)]
        (measured,), timed = time_widths(analysis, cost, [tuple(kept)], time_models)
        predicted = cost.measure(current, "latency")
        tried.append({"rates": current, "target_ms": target, "predicted_ms": predicted, "measured_ms": measured,
                      "timed_ms": timed, "kept": kept})
        log(f"latency goal {goal:.3f} ms: the chosen widths predicted {predicted:.3f} ms, measured {measured:.3f} ms")
        if abs(measured - goal) <= TOLERANCE * goal or attempt == CORRECTIONS:
            break
        target = predicted * goal / measured  # the prediction that measures `goal`, if the miss scales
        moved = guidance.rescale_kept(current, target, "latency")
        if tuple(cost.kept_counts(moved)) == tuple(cost.kept_counts(current)):
            break  # the widths cannot move by less than a step of round_to
        current = moved
    within = [i for i, t in enumerate(tried) if t["measured_ms"] <= goal * (1 + TOLERANCE)]
    measured = [t["measured_ms"] for t in tried]
    chosen = max(within, key=measured.__getitem__) if within else int(np.argmin(measured))
    record = {"goal_ms": goal, "tolerance": TOLERANCE, "chosen": chosen,
              "seconds": time.monotonic() - started,
              "tried": [{k: v for k, v in t.items() if k != "rates"} for t in tried]}
    return tried[chosen]["rates"], record


def settle_starts(analysis: Analysis, cost: CostModel, guidance, starts: dict, goal: float, time_models,
                  log=print) -> tuple[dict, dict, dict]:
    """The search's starts (name -> rates, None: out of reach) timed as whole models, interleaved in
    one run beside the round's model, and each moved onto the prediction that would measure `goal`
    (its kept fractions scaled, `Guidance.rescale_kept`; a start within TOLERANCE stays).

    Scored as predicted, the starts were compared at unequal true latencies: the latency model is
    fitted on uniform cuts, and on ResNet-20 it was 7-8 % optimistic for uniform rates and 5-12 %
    for the global allocations, which won every run, and lost accuracy once the goal check cut
    them onto the goal in width steps. Returns the starts, the target each now meets
    (its corrected prediction: the annealing rescales its moves onto the winner's) and a record."""
    started = time.monotonic()
    names = [name for name, rates in starts.items() if rates is not None]
    kept = {name: tuple(int(k) for k in cost.kept_counts(starts[name])) for name in names}
    distinct = list(dict.fromkeys(kept.values()))
    measured_ms, timed = time_widths(analysis, cost, distinct, time_models)
    measured_of = dict(zip(distinct, measured_ms))
    settled, targets, record = dict(starts), {}, {"goal_ms": goal, "timed_ms": timed, "starts": {}}
    for name in names:
        measured = measured_of[kept[name]]
        predicted = cost.measure(starts[name], "latency")
        if abs(measured - goal) > TOLERANCE * goal:
            settled[name] = guidance.rescale_kept(starts[name], predicted * goal / measured, "latency")
        targets[name] = cost.measure(settled[name], "latency")
        record["starts"][name] = {"predicted_ms": predicted, "measured_ms": measured, "kept": list(kept[name]),
                                  "settled_kept": [int(k) for k in cost.kept_counts(settled[name])],
                                  "target_ms": targets[name]}
        log(f"latency goal {goal:.3f} ms: start {name} predicted {predicted:.3f} ms, measured {measured:.3f} ms")
    record["seconds"] = time.monotonic() - started
    return settled, targets, record
