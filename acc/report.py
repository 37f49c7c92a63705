"""The compile report: report.json (everything measured), report.md (for a person) and its plots."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from acc import atomic
from acc.format import human, ratio, table


def _acc(score) -> str:
    if not score:
        return "-"
    return f"{100 * score['accuracy']:.2f}%" if "accuracy" in score else f"loss {score['loss']:.4f}"


def summary_rows(report: dict) -> list[list[str]]:
    b, a = report["accuracy_before"], report["accuracy_after"]
    p, f = report["params"], report["flops"]
    return [
        ["accuracy (validation)", _acc(b.get("val")), _acc(a.get("val")), ""],
        ["accuracy (test)", _acc(b.get("test")), _acc(a.get("test")), ""],
    ] + _top5_rows(b, a) + [
        ["parameters (dense)", human(p["before"]), human(p["after_dense"]), ratio(p["before"], p["after_dense"])],
        ["parameters (non-zero)", human(p["before"]), human(p["after_nonzero"]), ratio(p["before"], p["after_nonzero"])],
        ["FLOPs (MACs)", human(f["before"]), human(f["after"]), ratio(f["before"], f["after"])],
    ] + latency_rows(report.get("latency"))


def latency_rows(latency: dict | None) -> list[list[str]]:
    """Measured milliseconds, original and result side by side, per engine (report's `latency`)."""
    if not latency or "before_ms" not in latency:
        return []
    rows = []
    where = "" if latency.get("device") in (None, "host") else f", {latency['device']}"
    engines = [(latency["engine"] + (f" {latency['target']}" if latency["engine"] == "tvm" else "") + where, latency)]
    if latency.get("onnxruntime"):
        engines.append(("onnxruntime", latency["onnxruntime"]))
    for name, x in engines:
        speedup = f"{x['speedup']:.2f}x" if x.get("speedup") else ""
        rows.append([f"latency ms ({name})", f"{x['before_ms']:.3f}", f"{x['after_ms']:.3f}", speedup])
    return rows


def latency_line(latency: dict | None) -> str | None:
    """The latency goal, prediction and measurement (metric latency)."""
    if not latency or latency.get("goal_ms") is None or "after_ms" not in latency:
        return None
    return (f"latency goal {latency['goal_ms']:.3f} ms, predicted {latency['predicted_ms']:.3f} ms, measured "
            f"{latency['after_ms']:.3f} ms ({latency['engine']}, {latency['device']})")


def _top5_rows(before: dict, after: dict) -> list[list[str]]:
    rows = []
    for split in ("val", "test"):
        b, a = before.get(split) or {}, after.get(split) or {}
        if "top5" in b or "top5" in a:
            shown = [f"{100 * x['top5']:.2f}%" if "top5" in x else "-" for x in (b, a)]
            rows.append([f"top-5 ({'validation' if split == 'val' else 'test'})", *shown, ""])
    return rows


def summary_table(report: dict) -> str:
    return table(["", "before", "after", "reduction"], summary_rows(report), {1, 2, 3})


def search_cost_line(report: dict) -> str | None:
    """The search's share of the run's wall time, in all and per round."""
    c = report.get("search_cost")
    if not c or not c.get("run_seconds"):
        return None
    rounds = ", ".join(f"round {r['round']} {r['seconds']:.0f} s ({100 * (r['share'] or 0):.0f} %)" for r in c["per_round"])
    return (f"search: {c['seconds']:.0f} s of {c['run_seconds']:.0f} s ({100 * c['share']:.0f} % of the run; "
            f"{c['setup_seconds']:.0f} s of it setting up the scorer); {rounds}")


LABEL_CHARS = 22
_OP_TYPE = re.compile(r"[A-Z][A-Za-z0-9]*(_\d+)?")


def group_labels(names: list[str]) -> list[str]:
    """Short labels that tell groups apart, for plots: the most specific end of each node name.

    "/layers/layers.1/layers.1.0/conv1/Conv" -> "layers.1.0/conv1": path parts that the next part
    extends ("layers" before "layers.1") and a trailing op type go, then labels that are alike take
    one more part each until they differ; labels still alike, or longer than LABEL_CHARS, are
    numbered instead ("#7", the row of report.md's channel-group table).
    """
    parts = [_name_parts(name) for name in names]
    taken = [1] * len(parts)
    while True:
        labels = ["/".join(p[-k:]) for p, k in zip(parts, taken)]
        counts = Counter(labels)
        longer = [i for i, label in enumerate(labels) if counts[label] > 1 and taken[i] < len(parts[i])]
        if not longer:
            break
        for i in longer:
            taken[i] += 1
    return [label if counts[label] == 1 and len(label) <= LABEL_CHARS else f"#{i}" for i, label in enumerate(labels, start=1)]


def _name_parts(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p]
    parts = [p for i, p in enumerate(parts) if i + 1 == len(parts) or not parts[i + 1].startswith(p)]
    if len(parts) > 1 and _OP_TYPE.fullmatch(parts[-1]):
        parts = parts[:-1]
    return parts or [name]


def input_line(info: dict | None) -> str | None:
    """The image input in words: name, layout, working shape, and what became of its free dims."""
    if not info:
        return None
    text = f"Input '{info['name']}': {info['layout']}, {'x'.join(map(str, info['shape']))}"
    dims = info.get("free_dims") or {}
    if dims.get("free"):
        free = ", ".join(f"{name} {'x'.join('?' if d is None else str(d) for d in shape)}" for name, shape in dims["free"].items())
        if dims.get("kept"):
            checked = ", ".join(f"{n}={'x'.join(map(str, s))}" for n, s in (dims.get("checked_at") or {}).items())
            text += f"; free dims kept ({free}), verified also at {checked}"
        else:
            text += f"; free dims pinned to this shape: {dims.get('reason')}"
    return text


def _plots(out_dir: Path, report: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    widths = [w for w in report["widths"] if w["after"] is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(widths)), 4))
    xs = range(len(widths))
    ax.bar(xs, [w["before"] for w in widths], color="#c8d3e0", label="before")
    ax.bar(xs, [w["after"] for w in widths], color="#2d6fb3", label="after")
    labels = dict(zip([w["group"] for w in report["widths"]], group_labels([w["group"] for w in report["widths"]])))
    ax.set_xticks(list(xs), [labels[w["group"]] for w in widths], rotation=75, fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title("Channel-group widths")
    ax.legend()
    fig.tight_layout()
    made.append(_save(fig, out_dir / "widths.png"))

    rounds = report["per_round"]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ks = [0] + [r["round"] for r in rounds]
    ax1.plot(ks, [report["params"]["before"]] + [r["params_after"] for r in rounds], "o-", color="#2d6fb3", label="parameters")
    nonzero = [r.get("nonzero_after") or r["params_after"] for r in rounds]
    if nonzero != [r["params_after"] for r in rounds]:
        ax1.plot(ks, [report["params"]["before"]] + nonzero, "o:", color="#2d6fb3", label="non-zero parameters")
        ax1.legend(loc="lower left", fontsize=7)
    ax1.set_yscale("log")
    ax1.set_xticks(ks)
    ax1.set_xlabel("round")
    ax1.set_ylabel("parameters")
    accs = [report["accuracy_before"].get("test") or report["accuracy_before"].get("val")]
    accs += [r["accuracy_after"].get("test") or r["accuracy_after"].get("val") for r in rounds]
    if all(a and "accuracy" in a for a in accs):
        ax2 = ax1.twinx()
        ax2.plot(ks, [100 * a["accuracy"] for a in accs], "s--", color="#c0392b", label="accuracy")
        ax2.set_ylabel("accuracy (%)")
    ax1.set_title("Size and accuracy per round")
    fig.tight_layout()
    made.append(_save(fig, out_dir / "rounds.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    offset = 0
    for i, s in enumerate(report["search"], start=1):
        if not s["trace"]:
            continue
        steps = [offset + t["step"] for t in s["trace"]]
        ax.plot(steps, [t["candidate_energy"] for t in s["trace"]], ".", alpha=0.5, label=f"round {i} candidates")
        ax.plot(steps, [t["energy"] for t in s["trace"]], "-", label=f"round {i} current")
        offset = steps[-1] + 1 if steps else offset
    ax.set_xlabel("search step")
    ax.set_ylabel("energy (validation loss x scale)")
    ax.set_title("Simulated annealing")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no search (uniform rates)", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    made.append(_save(fig, out_dir / "search.png"))
    return made


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name


def markdown(report: dict, plots: list[str]) -> str:
    lines = ["# acc compile report", "", f"Model: `{report['model']}`  ",
             f"Requested: {report['rate_requested']:g}x fewer {report['metric']} in {report['rounds']} rounds; "
             f"{report['seconds']:.0f} s in all.", "", summary_table(report), ""]
    if search_cost_line(report):
        lines += [search_cost_line(report)[0].upper() + search_cost_line(report)[1:] + ".", ""]
    if input_line(report.get("input")):
        lines += [input_line(report["input"]), ""]
    latency = report.get("latency") or {}
    if latency_line(latency):
        lines += [latency_line(latency)[0].upper() + latency_line(latency)[1:] + ".", ""]
    if latency.get("warning"):
        lines += [f"**Warning**: {latency['warning']}.", ""]
    lines += ["## Rounds", ""]
    lines.append(table(["round", "goal", "parameters", "non-zero", "FLOPs", "accuracy", "seconds"],
                       [[r["round"], human(r["goal"]), human(r["params_after"]), human(r.get("nonzero_after") or r["params_after"]),
                         human(r["flops_after"]), _acc(r["accuracy_after"].get("test") or r["accuracy_after"].get("val")),
                         f"{r['seconds']:.0f}"] for r in report["per_round"]], {1, 2, 3, 4, 5, 6}))
    lines += ["", "## Channel groups", ""]
    labels = group_labels([w["group"] for w in report["widths"]])
    lines.append(table(["#", "plot label", "group", "before", "after"],
                       [[i, label, w["group"], w["before"], w["after"] if w["after"] is not None else "-"]
                        for i, (label, w) in enumerate(zip(labels, report["widths"]), start=1)], {0, 3, 4}))
    lines += ["", "## Rates chosen by the search (per round)", ""]
    for r in report["per_round"]:
        shown = ", ".join(f"{k}: {v:.2f}" for k, v in r["rates"].items())
        lines.append(f"- round {r['round']}: {shown}")
    if any(r.get("column_rates") for r in report["per_round"]):
        lines += ["", "## Schemes per layer (per round: filter rate of the group it writes / column rate)", ""]
        layers = [x["layer"] for x in report["per_round"][0]["layers"]]
        per_round = [{x["layer"]: x for x in r["layers"]} for r in report["per_round"]]
        rows = []
        for name in layers:
            cells = [name]
            for rr in per_round:
                x = rr.get(name)
                cells.append("-" if x is None else f"{x['scheme']} {x['filter_rate']:.2f}/{x['column_rate']:.2f}")
            rows.append(cells)
        lines.append(table(["layer"] + [f"round {r['round']}" for r in report["per_round"]], rows))
    lines += ["", "## Search", ""]
    for i, s in enumerate(report["search"], start=1):
        lines.append(f"- round {i}: " + _search_line(s))
    if "library" in report:
        lines += ["", f"TVM library: `{report['library']['path']}` (target {report['library']['target']})"]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _search_line(s: dict) -> str:
    if not s.get("trace"):
        return "none (uniform rates)"
    start = s["trace"][0]["energy"]
    chosen = (s.get("start") or {}).get("chosen", "uniform")
    starts = (s.get("start") or {}).get("energies") or {}
    named = {"uniform": "uniform rates", "l1": "global L1", "bn": "global BN scale"}
    text = f"{s['evaluated']} candidates scored"
    if len(starts) > 1:
        text += "; starts: " + ", ".join(f"{named.get(k, k)} {'out of reach' if e is None else f'{e:.0f}'}"
                                         for k, e in starts.items()) + f" (started from {named.get(chosen, chosen)})"
    settled = ((s.get("start") or {}).get("settled") or {}).get("starts") or {}
    if settled:
        text += ("; starts timed whole before scoring and moved onto the goal (measured/predicted: "
                 + ", ".join(f"{named.get(k, k)} {v['measured_ms'] / v['predicted_ms']:.2f}" for k, v in settled.items()) + ")")
    text += f"; energy of the start {start:.0f}, of the best {s['best_energy']:.0f}"
    c = s.get("confirmation") or {}
    if c:
        verdict = "kept the best" if c["kept_best"] else f"fell back to the start ({named.get(chosen, chosen)})"
        text += f"; re-scored with {len(c['best_energies']) - 1} more seeds: {verdict}"
        if "mean_difference" in c:
            text += f" (best - start: {c['mean_difference']:.0f} ± {c['standard_error']:.0f})"
    b = s.get("budget") or {}
    if b.get("cut"):
        text += (f"; cut to {b['search_share']:.0%} of the round: {b['finetune_steps_asked']} -> {b['finetune_steps']} "
                 f"fine-tune steps per candidate, {b['steps_asked']} -> {b['steps']} search steps")
    if s.get("scoring"):
        text += f"; {_scoring_text(s['scoring'], s.get('config', {}).get('candidates', 1))}"
        if "seconds" in s:
            text += f", {s['seconds']:.0f} s"
    return text


def _scoring_text(scoring: dict, candidates: int) -> str:
    """How the search's candidates were scored, in words."""
    per_step = f"{candidates} candidates per step" if candidates > 1 else "1 candidate per step"
    if scoring.get("mode") != "ray":
        return f"scored serially in this process, {per_step}"
    gpus = f" + {scoring['candidate_gpus']:g} GPU" if scoring.get("candidate_gpus") else ""
    return (f"scored on Ray ({scoring['address']}): {scoring['workers']} workers of {scoring['candidate_cpus']:g} CPU{gpus}, "
            f"{scoring['candidates_per_step']} candidates per step")


def strict_json(value, **kwargs) -> str:
    """json.dumps for report.json: strict JSON, which has no NaN or infinity (other readers than
    Python's refuse them): such floats, e.g. a diverged candidate's energy, are written as the
    strings 'nan', 'inf', '-inf'."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, default=lambda v: clean(float(v)), **kwargs)


def write_report(out_dir: Path, report: dict) -> None:
    plots = _plots(out_dir, report)
    report["plots"] = plots
    atomic.write_text(out_dir / "report.json", strict_json(report, indent=2))
    atomic.write_text(out_dir / "report.md", markdown(report, plots))
