"""Per-layer pruning rates and schemes: parsed from JSON or made uniform, then turned into constraints.

A rate is the fraction removed. Schemes (AutoCompress part 1):
- filter: a channel group loses `rate` of its channels (filters of its producers, channels of its readers);
- column: a conv/Gemm weight loses `rate` of its columns (in_channel x kh x kw positions), shape kept;
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
from acc.passes.channels import IN_WEIGHT
from acc.prune.bridge import TorchModel
from acc.prune.constraints import ColumnConstraint, ConstraintSet, GroupConstraint

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
        frozen_readers = _stem_layers(analysis)
        rates.columns = {n: each for n in column_layers(analysis) if n not in frozen_readers}
    return rates


def _stem_layers(analysis: Analysis) -> set[str]:
    """Layers that read a graph input directly."""
    inputs = set(analysis.index.input_names)
    return {n.name for n in analysis.model.graph.node if n.input and n.input[0] in inputs}


def build_constraints(analysis: Analysis, bridge: TorchModel, rates: Rates, criterion: str = "l2") -> ConstraintSet:
    groups = []
    for name, rate in rates.groups.items():
        g = analysis.group(name)
        if rate > 0:
            groups.append(GroupConstraint(analysis, bridge, name, g.width - round(rate * g.width), criterion))
    columns = []
    layers = column_layers(analysis)
    for node_name, rate in rates.columns.items():
        init = layers[node_name]
        view = bridge.views.get(init)
        if view is None or rate <= 0:
            continue
        member = next(m for m in analysis.members if m.node == node_name and m.role == IN_WEIGHT)
        in_axis = view.torch_axis(member.axis)
        c = ColumnConstraint(init, view.tensor.shape, in_axis, 0, criterion)
        c.keep = max(1, c.columns - round(rate * c.columns))
        columns.append(c)
    return ConstraintSet(groups, columns)
