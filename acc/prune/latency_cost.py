"""Latency as a function of per-group pruning rates, from measured per-layer times.

Each node that does multiply-accumulates (Conv, Gemm, MatMul, ConvTranspose) is timed alone, at
batch 1, on a grid of its input widths: a "form" is one way a dimension of its inputs follows the
channel groups (a conv's input channels, its output channels; a Flatten->Gemm's features), and the
grid holds a few kept counts per form (at most two forms per node, so a conv is a small 2-D
table). A node's time at other widths is the bilinear interpolation of its table. A node whose
widths cannot be re-shaped alone (more than two forms, a grouped conv that is not depthwise) is
timed at full width and scaled by its kept fraction, as FLOPs would.

The per-node sum is not the model's time: engines fuse BatchNorm and activations into the conv,
and run elementwise ops and per-op dispatch the table never sees. The model's time is fitted as
a * sum + b by least squares over the whole model timed at full width and with every group cut by
50 % and 85 % (b: the fixed cost, at least 0). The fit matters most on onnxruntime, which re-lays
out a lone conv's input and output (a cost the model pays once): there a lone layer's time
overstates what a cut saves. Measuring is the caller's job (acc.backends.layer_latency): this
module says what to measure and predicts from the figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from acc.passes.analysis import Analysis
from acc.passes.counting import count
from acc.passes.graph_index import attrs_of

GRID_FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.05)
MAX_GRID_POINTS = 9
CALIBRATION_RATIOS = (0.5, 0.85)  # the whole model is timed at full width and uniformly cut by these  # kept fractions timed per form (0.05: the search's max rate)
TIMED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerShape:
    """One node alone at concrete input shapes: what the engine times."""

    op_type: str
    shapes: tuple  # one shape per input
    attrs: tuple  # sorted (name, value) pairs
    opset: int = 17
    constants: tuple = ()  # per input, whether the model holds it as a constant (weights, bias)

    def key(self) -> str:
        return json.dumps([self.op_type, [list(s) for s in self.shapes], [list(a) for a in self.attrs], self.opset,
                           [bool(c) for c in self.constants]])

    def input_shapes(self) -> list:
        """The shapes fed at run time: those of the inputs that are not constants."""
        return [s for i, s in enumerate(self.shapes) if not self._constant(i)]

    def _constant(self, index: int) -> bool:
        return index < len(self.constants) and bool(self.constants[index])

    def onnx_model(self, seed: int = 0) -> onnx.ModelProto:
        """A single-node model; the model's constants are constants here too (random values).

        Engines pre-pack constant weights once (onnxruntime's blocked layouts, acc's TVM pack): as
        graph inputs a lone conv paid that re-layout on every run, which the model never does."""
        rng = np.random.default_rng(seed)
        names = [f"in{i}" for i in range(len(self.shapes))]
        inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(s))
                  for i, (n, s) in enumerate(zip(names, self.shapes)) if not self._constant(i)]
        inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
                 for i, (n, s) in enumerate(zip(names, self.shapes)) if self._constant(i)]
        output = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)
        node = helper.make_node(self.op_type, names, ["out"], **{k: (list(v) if isinstance(v, tuple) else v)
                                                                  for k, v in self.attrs})
        graph = helper.make_graph([node], "layer", inputs, [output], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])


@dataclass
class _Form:
    per_group: np.ndarray  # positions of each prunable group along the dimension
    n: int  # the dimension's size

    def kept(self, frac: np.ndarray) -> float:
        return self.n - self.per_group.sum() + self.per_group @ frac


@dataclass
class NodeLatency:
    node: str
    forms: list  # of _Form; 0, 1 or 2
    grid: list  # per form, the kept counts timed (ascending)
    table: np.ndarray  # ms, shape = len of each grid
    scaled: bool = False  # timed at full width only, scaled by the kept fraction of every form

    def predict(self, frac: np.ndarray) -> float:
        counts = [f.kept(frac) for f in self.forms]
        if self.scaled:
            return float(self.table.item() * np.prod([c / f.n for c, f in zip(counts, self.forms)]))
        value = self.table
        for axis, (c, grid) in enumerate(zip(counts, self.grid)):
            value = _interp_axis(value, np.asarray(grid, dtype=float), c, axis=0)
        return float(value)


def _interp_axis(table: np.ndarray, grid: np.ndarray, x: float, axis: int) -> np.ndarray:
    """Linear interpolation of `table` along its first axis at x (below the grid: proportional to x)."""
    if len(grid) == 1:
        return table[0] * (x / grid[0] if x < grid[0] else 1.0)
    if x <= grid[0]:
        return table[0] * (x / grid[0])
    j = int(np.clip(np.searchsorted(grid, x) - 1, 0, len(grid) - 2))
    t = min((x - grid[j]) / (grid[j + 1] - grid[j]), 1.0)
    return table[j] * (1 - t) + table[j + 1] * t


@dataclass
class LatencyModel:
    """Predicted milliseconds of the model at a vector of per-group keep fractions."""

    nodes: list
    scale: float  # a: whole-model ms per summed node ms
    fixed_ms: float  # b
    measured_ms: float  # the whole model at full width, as timed
    half_ms: float | None = None  # the model with every group cut by half
    how: dict = field(default_factory=dict)  # engine, target, device, grid: how the figures were measured

    def nodes_ms(self, frac: np.ndarray) -> float:
        return float(sum(n.predict(frac) for n in self.nodes))

    def predict(self, frac: np.ndarray) -> float:
        return self.scale * self.nodes_ms(frac) + self.fixed_ms

    def total(self) -> float:
        return self.measured_ms

    def group_holdings(self, groups: int) -> np.ndarray:
        """Milliseconds each group holds at full width: a layer's time split evenly over its forms,
        and a form's share over the groups its positions follow."""
        held = np.zeros(groups)
        full = np.ones(groups)
        for node in self.nodes:
            if not node.forms:
                continue
            ms = node.predict(full) / len(node.forms)
            for form in node.forms:
                held += ms * form.per_group / form.n
        return held

    def node_table(self) -> list[dict]:
        """Per node: its forms' sizes and the measured grid, for report.json."""
        return [{"node": n.node, "widths": [f.n for f in n.forms], "grid": [list(map(int, g)) for g in n.grid],
                 "ms": np.asarray(n.table).round(5).tolist(), "scaled": n.scaled} for n in self.nodes]


def _per_group(analysis: Analysis, layout: np.ndarray, root_group: dict, groups: int) -> np.ndarray:
    find = analysis.elements.find
    out = np.zeros(groups)
    for e in layout.tolist():
        gi = root_group.get(find(e)) if e >= 0 else None
        if gi is not None:
            out[gi] += 1
    return out


@dataclass
class _NodePlan:
    node: onnx.NodeProto
    shapes: list  # full input shapes
    dims: list  # per input, {axis: form index}
    forms: list
    reshape: bool  # False: timed at full width and scaled
    constants: tuple = ()  # per input, whether the model holds it as a constant


def _plan_node(analysis: Analysis, node: onnx.NodeProto, root_group: dict, groups: int,
               by_init: dict[str, list]) -> _NodePlan | None:
    """What to time for `node`: its input shapes, and which of their axes follow which form."""
    index = analysis.index
    if not node.input or any(not name or index.shape(name) is None for name in node.input):
        return None  # an optional input left empty, or a shape inference could not give
    shapes = [index.shape(name) for name in node.input]
    forms: list[_Form] = []
    keys: list[tuple] = []
    dims: list[dict] = []
    for name in node.input:
        axes = {}
        located = [(m.axis, m.layout) for m in by_init.get(name, [])] if name in index.initializers else []
        info = analysis.tensor_channels.get(name)
        if name not in index.initializers and info is not None:
            located = [(info.axis, info.layout)]
        for axis, layout in located:
            pg = _per_group(analysis, layout, root_group, groups)
            if not pg.any():
                continue
            key = (len(layout), tuple(np.round(pg / len(layout), 9)))
            if key not in keys:
                keys.append(key)
                forms.append(_Form(pg, len(layout)))
            axes[axis] = keys.index(key)
        dims.append(axes)
    reshape = len(forms) <= 2
    if node.op_type in ("Conv", "ConvTranspose") and attrs_of(node).get("group", 1) > 1:
        # depthwise (group == input channels, one form shared by input and output) re-shapes; other
        # grouped convs keep their group count and are scaled
        x_axes = dims[0]
        reshape = reshape and attrs_of(node)["group"] == shapes[0][1] and len(forms) <= 1 and 1 in x_axes
    constants = tuple(name in index.initializers for name in node.input)
    return _NodePlan(node, [list(s) for s in shapes], dims, forms, reshape, constants)


def _grid(form: _Form, widths: np.ndarray, round_to: int, fractions=GRID_FRACTIONS) -> list[int]:
    """Kept counts timed. A form of one group (its channels, or a Flatten's channel x position
    features) is timed at kept channel counts: with round_to K every multiple of K the group can
    keep, where there are at most MAX_GRID_POINTS (the search chooses among exactly these), else
    the fractions' counts (on multiples of K). Other forms: the fractions of their size."""
    nonzero = np.flatnonzero(form.per_group)
    if len(nonzero) == 1:
        g = int(nonzero[0])
        width, fixed = int(widths[g]), form.n - form.per_group[g]
        per_channel = form.per_group[g] / width
        multiples = sorted(set(range(round_to, width + 1, round_to)) | {width}) if round_to > 1 else []
        if not multiples or len(multiples) > MAX_GRID_POINTS:
            multiples = sorted({min(width, _snap(max(1, int(round(width * f))), round_to)) for f in fractions})
        return sorted({int(round(fixed + per_channel * c)) for c in multiples})
    return sorted({min(form.n, max(1, int(round(form.n * f)))) for f in fractions})


def _snap(count: int, round_to: int) -> int:
    return max(round_to, int(round(count / round_to)) * round_to) if round_to > 1 else count


def _variant(plan: _NodePlan, counts: tuple, opset: int) -> LayerShape:
    shapes = []
    for shape, axes in zip(plan.shapes, plan.dims):
        s = list(shape)
        for axis, form in axes.items():
            s[axis] = int(counts[form])
        shapes.append(tuple(s))
    attrs = dict(attrs_of(plan.node))
    if plan.node.op_type in ("Conv", "ConvTranspose") and attrs.get("group", 1) > 1:
        attrs["group"] = shapes[0][1]
    items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()
                         if isinstance(v, (int, float, str, list))))
    return LayerShape(plan.node.op_type, tuple(shapes), items, opset, plan.constants)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def plan_layers(analysis: Analysis, round_to: int = 1) -> tuple[list, list[LayerShape]]:
    """The nodes to time and every LayerShape the table needs (deduplicated, full widths first)."""
    groups = analysis.prunable_groups
    widths = np.array([g.width for g in groups])
    index_of = {g.name: i for i, g in enumerate(groups)}
    root_group = {}
    for g in groups:
        for root in analysis.channel_of_root(g):
            root_group[root] = index_of[g.name]
    opset = _opset(analysis.model)
    macs = count(analysis.model, analysis.index).node_flops
    by_init: dict[str, list] = {}  # initializer -> its members (the axes that follow groups)
    for m in analysis.members:
        by_init.setdefault(m.initializer, []).append(m)
    plans, wanted = [], {}
    for node in analysis.index.graph.node:
        if node.op_type not in TIMED_OPS or not macs.get(node.name):
            continue
        plan = _plan_node(analysis, node, root_group, len(groups), by_init)
        if plan is None:
            continue
        grids = [_grid(f, widths, round_to) for f in plan.forms] if plan.reshape else [[f.n] for f in plan.forms]
        cells = [tuple(c) for c in np.array(np.meshgrid(*grids, indexing="ij")).reshape(len(grids), -1).T] if grids else [()]
        variants = {cell: _variant(plan, cell, opset) for cell in cells}
        for v in variants.values():
            wanted.setdefault(v.key(), v)
        plans.append((plan, grids, variants))
    return plans, list(wanted.values())


def build_latency_model(analysis: Analysis, time_layers, time_models, round_to: int = 1, how: dict | None = None,
                        log=print) -> LatencyModel:
    """Time every layer variant (`time_layers(list[LayerShape]) -> list[ms]`) and the whole model at
    full width and uniformly cut (CALIBRATION_RATIOS), interleaved (`time_models(list[onnx.ModelProto]) -> list[ms]`), and fit
    the model (module docstring)."""
    from acc.passes.oneshot import ratio_plan
    from acc.passes.rewrite import rewrite

    plans, variants = plan_layers(analysis, round_to)
    log(f"latency table: {len(plans)} layers, {len(variants)} shapes to time")
    ms = dict(zip((v.key() for v in variants), time_layers(variants)))
    nodes = []
    for plan, grids, cells in plans:
        shape = [len(g) for g in grids]
        table = np.array([ms[cells[c].key()] for c in sorted(cells)], dtype=float).reshape(shape) if shape \
            else np.array(ms[cells[()].key()])
        nodes.append(NodeLatency(plan.node.name, plan.forms, grids, table, scaled=not plan.reshape))
    frac_full = np.ones(len(analysis.prunable_groups))
    sum_full = sum(n.predict(frac_full) for n in nodes)
    if not analysis.prunable_groups or sum_full <= 0:
        (full_ms,) = time_models([analysis.model])
        return LatencyModel(nodes, 1.0, max(full_ms - sum_full, 0.0), full_ms, None,
                            dict(how or {}, grid=list(GRID_FRACTIONS), round_to=round_to))
    cuts = list(CALIBRATION_RATIOS)
    timed = time_models([analysis.model] + [rewrite(analysis, ratio_plan(analysis, r, round_to=round_to)) for r in cuts])
    sums = [sum_full] + [sum(n.predict(_keep_fractions(analysis, r, round_to)) for n in nodes) for r in cuts]
    scale, fixed = fit_line(np.asarray(sums), np.asarray(timed))
    full_ms, half_ms = timed[0], timed[1]
    return LatencyModel(nodes, scale, fixed, full_ms, half_ms, dict(how or {}, grid=list(GRID_FRACTIONS),
                                                                       round_to=round_to))


def fit_line(sums: np.ndarray, ms: np.ndarray) -> tuple[float, float]:
    """a, b of ms = a * sums + b by least squares, with b >= 0 (else through the origin) and a > 0."""
    a, b = np.polyfit(sums, ms, 1) if np.ptp(sums) > 1e-12 else (0.0, -1.0)
    if b < 0 or a <= 0:
        a, b = float(sums @ ms / (sums @ sums)), 0.0
    return float(a), float(b)


def _keep_fractions(analysis: Analysis, ratio: float, round_to: int) -> np.ndarray:
    from acc.prune.cost import kept_channels

    return np.array([kept_channels(g.width, len(g.prunable), ratio, round_to) / g.width
                     for g in analysis.prunable_groups])
