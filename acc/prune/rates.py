"""Per-layer pruning rates and schemes: parsed from JSON or made uniform, then turned into constraints.

A rate is the fraction removed. Schemes (AutoCompress part 1):
- filter: a channel group loses `rate` of its channels (filters of its producers, channels of its readers);
- column: a conv/Gemm weight loses `rate` of its columns (in_channel x kh x kw positions), shape kept;
  with filter pruning too, `rate` of the columns its input channels still have; columns that are
  already all zero stay zero and `rate` is a share of the others (progressive rounds never regrow);
- mixed: both, each at 1 - sqrt(1 - rate), so the kept fraction of a weight is about 1 - rate.

Rates JSON: {"groups": {"<group name>": 0.5, ...}, "columns": {"<conv node name>": 0.3, ...}};
a flat {"<group name>": rate} means groups only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from acc.errors import InputError
from acc.passes.analysis import Analysis
from acc.passes.channels import DW_WEIGHT, IN_WEIGHT, OUT_WEIGHT
from acc.prune.bridge import TorchModel
from acc.prune.constraints import ColumnConstraint, ConstraintSet, GroupConstraint
from acc.prune.cost import kept_channels

SCHEMES = ("filter", "column", "mixed")


@dataclass
class Rates:
    groups: dict[str, float] = field(default_factory=dict)
    columns: dict[str, float] = field(default_factory=dict)  # conv/Gemm node name -> rate

    def to_json(self) -> dict:
        return {"groups": dict(self.groups), "columns": dict(self.columns)}


def _check_rate(where: str, rate) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise InputError(f"rate for {where} is not a number: {rate!r}") from None
    if not 0.0 <= r < 1.0:
        raise InputError(f"rate for {where} must be in [0, 1), got {r}")
    return r


def column_layers(analysis: Analysis) -> dict[str, str]:
    """Conv/Gemm node name -> its weight initializer, for layers whose columns may be pruned.

    Depthwise convs (one input channel per filter) have no columns to share; readers of frozen
    channels only (the stem reading the image) are skipped so the input stays dense.
    """
    layers = {}
    nodes = {n.name: n for n in analysis.model.graph.node}
    for m in analysis.members:
        node = nodes[m.node]
        if m.role == IN_WEIGHT and node.op_type in ("Conv", "Gemm", "MatMul"):
            layers[m.node] = m.initializer
    return layers


def column_search_layers(analysis: Analysis) -> dict[str, str]:
    """Column layers the search and uniform rates may thin: all but those reading a graph input."""
    stem = stem_layers(analysis)
    return {n: init for n, init in column_layers(analysis).items() if n not in stem}


def layer_schemes(analysis: Analysis, rates: Rates) -> list[dict]:
    """Per conv/Gemm layer: the filter rate of the group it writes, its column rate, and the scheme."""
    group_of_member = {mi: g.name for g in analysis.prunable_groups for mi in g.members}
    written = {}
    for mi, m in enumerate(analysis.members):
        if m.role in (OUT_WEIGHT, DW_WEIGHT) and mi in group_of_member:
            written.setdefault(m.node, group_of_member[mi])
    out = []
    for node in column_layers(analysis):
        f = rates.groups.get(written.get(node), 0.0)
        c = rates.columns.get(node, 0.0)
        scheme = "mixed" if f > 0 and c > 0 else "filter" if f > 0 else "column" if c > 0 else "none"
        out.append({"layer": node, "group": written.get(node), "filter_rate": f, "column_rate": c, "scheme": scheme})
    return out


def load_rates(path: str | os.PathLike, analysis: Analysis) -> Rates:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such rates file: {p}")
    try:
        data = json.loads(p.read_text())
    except ValueError as err:
        raise InputError(f"{p}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected an object of rates")
    groups = data.get("groups", {} if "columns" in data else data)
    columns = data.get("columns", {})
    names = {g.name for g in analysis.prunable_groups}
    layers = column_layers(analysis)
    rates = Rates()
    for name, rate in groups.items():
        if name not in names:
            raise InputError(f"{p}: '{name}' is not a prunable group of this model (see acc analyze)")
        rates.groups[name] = _check_rate(name, rate)
    for name, rate in columns.items():
        if name not in layers:
            raise InputError(f"{p}: '{name}' is not a conv/Gemm layer of this model")
        rates.columns[name] = _check_rate(name, rate)
    return rates


def uniform_rates(analysis: Analysis, rate: float, scheme: str = "filter") -> Rates:
    if scheme not in SCHEMES:
        raise InputError(f"unknown scheme '{scheme}' (choose from {', '.join(SCHEMES)})")
    rate = _check_rate("--uniform", rate)
    each = 1.0 - math.sqrt(1.0 - rate) if scheme == "mixed" else rate
    rates = Rates()
    if scheme in ("filter", "mixed"):
        rates.groups = {g.name: each for g in analysis.prunable_groups}
    if scheme in ("column", "mixed"):
        rates.columns = {n: each for n in column_search_layers(analysis)}
    return rates


def check_round_to(analysis: Analysis, round_to: int) -> int:
    """`--round-to` K: at least 1 and no wider than the widest prunable group (else nothing could move)."""
    try:
        k = int(round_to)
    except (TypeError, ValueError):
        raise InputError(f"--round-to takes a whole number of channels, got {round_to!r}") from None
    if k != round_to or k < 1:
        raise InputError(f"--round-to must be a whole number of channels, 1 or more, got {round_to}")
    widest = max((g.width for g in analysis.prunable_groups), default=0)
    if k > 1 and k > widest:
        raise InputError(f"--round-to {k} is wider than the widest prunable channel group ({widest} channels): "
                         "no group could be pruned")
    return k


def round_rates(analysis: Analysis, rates: Rates, round_to: int) -> Rates:
    """`rates` with every group rate moved to the one that keeps a multiple of `round_to` channels
    (acc.prune.cost.kept_channels), as the exact fraction removed; groups left whole drop out."""
    if round_to <= 1:
        return rates
    groups = {}
    for name, rate in rates.groups.items():
        g = analysis.group(name)
        kept = kept_channels(g.width, len(g.prunable), rate, round_to)
        if kept < g.width:
            groups[name] = (g.width - kept) / g.width
    return Rates(groups=groups, columns=dict(rates.columns))


def stem_layers(analysis: Analysis) -> set[str]:
    """Layers that read a graph input directly."""
    inputs = set(analysis.index.input_names)
    return {n.name for n in analysis.model.graph.node if n.input and n.input[0] in inputs}


def classifier_layers(analysis: Analysis) -> set[str]:
    """Conv/Gemm/MatMul layers that produce a graph output."""
    outputs = set(analysis.index.output_names)
    return {n.name for n in analysis.model.graph.node
            if n.op_type in ("Gemm", "MatMul", "Conv") and any(o in outputs for o in n.output)}


def build_constraints(analysis: Analysis, bridge: TorchModel, rates: Rates, criterion: str = "l2") -> ConstraintSet:
    groups = []
    for name, rate in rates.groups.items():
        g = analysis.group(name)
        keep = kept_channels(g.width, len(g.prunable), rate)
        if keep < g.width:
            groups.append(GroupConstraint(analysis, bridge, name, keep, criterion))
    columns = []
    for node_name, init in column_layers(analysis).items():
        view = bridge.views.get(init)
        if view is None:
            continue
        member = next(m for m in analysis.members if m.node == node_name and m.role == IN_WEIGHT)
        c = ColumnConstraint(init, view.tensor.shape, view.torch_axis(member.axis), rates.columns.get(node_name, 0.0),
                             criterion, initial=view.tensor)
        if c.rate > 0 or bool(c.retired.any()):  # zero columns from an earlier round stay zero
            columns.append(c)
    return ConstraintSet(groups, columns)
