"""Layer-wise least-squares refit of every conv/Gemm that reads pruned channels (ThiNet, Luo et
al. 2017; channel pruning, He et al. 2017).

A layer that reads pruned channels has lost their contribution. Its kept input-channel weights
(and bias) are solved so that, fed the pruned model's own input to the layer, it reproduces the
ORIGINAL model's output of that layer on the calibration images (normal_equations.py). Layers go
in graph (topological) order and each one's inputs are recomputed through the layers already
refitted, so the next layer also absorbs the error left by the ones before it instead of
compounding it.

Correspondence: the pruned and the original torch models are converted from the same ONNX graph,
so a layer is found in both through its weight initializer's name (the bridge's views). The
original's outputs of every layer come from one forward pass per batch (OriginalTargets), the
pruned model's inputs to them from one sweep paused at each layer while it is refitted
(sweep.LayerSweep); where either passes its memory budget, a forward pass stopped at the layer
gives them layer by layer, to the same figures.

Handled: 2-D Conv (im2col by unfold, any stride/padding/dilation), depthwise Conv (one small
solve per channel: its channel reads only itself), Gemm (nn.Linear, any transB/alpha), and MatMul
with a constant [in, out] weight (a transformer's Linear as exporters write it: x @ W, then an Add
of a constant bias, which is solved with it). Skipped, with the reason in the report: grouped convs
that are not depthwise, 1-D/3-D convs, MatMul between two activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from acc.passes.analysis import Analysis
from acc.passes.channels import DW_WEIGHT, IN_WEIGHT, OUT_WEIGHT
from acc.passes.plan import Plan, Removal
from acc.prune.bridge import TensorView, TorchModel
from acc.prune.posttrain.normal_equations import NormalEquations, ridge_fit
from acc.prune.posttrain.sweep import LayerSweep

LAYER_OPS = ("Conv", "Gemm", "MatMul")
ROWS_PER_UNKNOWN = 64  # conv output positions are sampled down to about this many rows per unknown
BATCH = 64
MAX_UNKNOWNS = 8192  # a layer's K x K float64 normal matrix: 0.5 GiB here (VGG's 25,088-wide Gemm would need 4.7)


@dataclass
class RefitLayer:
    node: str
    op: str
    weight: str
    module: nn.Module | None  # in the pruned model
    original: nn.Module | None  # in the original model
    kept_in: torch.Tensor  # long: kept input channels (torch input axis)
    kept_out: torch.Tensor  # long: kept output channels
    kind: str = ""  # conv | depthwise | linear | matmul
    skip: str | None = None
    # matmul only: the weight [in, out] and the following Add's bias [out], in the pruned model, and
    # the original's bias (the refit's target is the original's MatMul output plus that bias).
    weight_view: TensorView | None = None
    bias_view: TensorView | None = None
    original_bias: TensorView | None = None


def read_members(analysis: Analysis, node: str):
    """(reading member, writing member) of a layer: its IN/DW weight member and its OUT member."""
    reads = next((m for m in analysis.members if m.node == node and m.role in (IN_WEIGHT, DW_WEIGHT)), None)
    writes = next((m for m in analysis.members if m.node == node and m.role in (OUT_WEIGHT, DW_WEIGHT)), None)
    return reads, writes


def layers_to_refit(analysis: Analysis, plan: Plan, bridge: TorchModel, original: TorchModel) -> list[RefitLayer]:
    """The conv/Gemm layers that read pruned channels, in topological order."""
    removal = Removal(analysis, plan)
    layers = []
    for node in analysis.index.topological_nodes():
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        reads, writes = read_members(analysis, node.name)
        if reads is None:
            continue
        kept_in_mask = removal.keep_mask(reads.layout)
        if kept_in_mask.all():
            continue
        kept_out_mask = removal.keep_mask(writes.layout) if writes is not None else None
        if node.op_type == "MatMul":
            layers.append(matmul_layer(analysis, node, reads, kept_in_mask, kept_out_mask, bridge, original))
        else:
            layers.append(_layer(node, reads, kept_in_mask, kept_out_mask, bridge, original))
    return layers


def taps(layer: RefitLayer) -> int:
    """Weights per input channel and output of a conv/linear/matmul layer (the kernel's size)."""
    return 1 if layer.kind in ("linear", "matmul") else int(math.prod(layer.module.kernel_size))


def unknowns(layer: RefitLayer) -> int:
    """Unknowns per output of a conv/linear/matmul layer's solve: kept inputs x taps, and the bias."""
    return len(layer.kept_in) * taps(layer) + (1 if has_bias(layer) else 0)


def _too_many_unknowns(layer: RefitLayer) -> str | None:
    count = unknowns(layer)
    if count > MAX_UNKNOWNS:
        return (f"{count} unknowns per output: its normal equations would take "
                f"{count * count * 8 / 2**30:.1f} GiB (the refit stops at {MAX_UNKNOWNS})")
    return None


def _module_writing(bridge: TorchModel, tensor: str) -> nn.Module | None:
    """The converted module that computes ONNX tensor `tensor` (onnx2torch's per-node mapping)."""
    for module in bridge.module.modules():
        mapping = getattr(module, "onnx_mapping", None)
        if mapping is not None and tensor in mapping.outputs:
            return module
    return None


def _bias_after(analysis: Analysis, node, bridge: TorchModel) -> tuple[str | None, TensorView | None]:
    """(name, view) of the constant [out] bias a single Add puts on the MatMul's output, if any."""
    index = analysis.index
    consumers = index.consumers.get(node.output[0], [])
    if len(consumers) != 1 or consumers[0][0].op_type != "Add" or node.output[0] in index.output_names:
        return None, None
    add = consumers[0][0]
    other = add.input[1 - consumers[0][1]]
    shape = index.shape(node.output[0])
    if not index.is_constant(other) or shape is None or index.array(other).shape != (shape[-1],):
        return None, None
    view = bridge.views.get(other)
    return (other, view) if view is not None and view.scale == 1.0 and not view.transposed else (None, None)


def matmul_layer(analysis, node, reads, kept_in_mask, kept_out_mask, bridge, original) -> RefitLayer:
    weight = node.input[1]
    view, view0 = bridge.views.get(weight), original.views.get(weight)
    module, module0 = _module_writing(bridge, node.output[0]), _module_writing(original, node.output[0])
    kept_in = torch.from_numpy(kept_in_mask).nonzero().flatten()
    width_out = view.tensor.shape[-1] if view is not None else 0
    kept_out = (torch.from_numpy(kept_out_mask).nonzero().flatten() if kept_out_mask is not None
                else torch.arange(width_out))
    layer = RefitLayer(node.name, node.op_type, weight, module, module0, kept_in, kept_out, "matmul")
    if view is None or view0 is None or module is None or module0 is None or node.input[0] == weight:
        layer.skip = "MatMul between two activations: only a constant weight is refitted"
    elif view.tensor.dim() != 2 or reads.axis != 0 or view.scale != 1.0 or view.transposed:
        layer.skip = "MatMul whose constant weight is not a plain [in, out] matrix"
    else:
        layer.weight_view = view
        bias_name, layer.bias_view = _bias_after(analysis, node, bridge)
        layer.original_bias = original.views.get(bias_name) if bias_name is not None else None
        if layer.original_bias is None:
            layer.bias_view = None
        layer.skip = _too_many_unknowns(layer)
    return layer


def _layer(node, reads, kept_in_mask, kept_out_mask, bridge, original) -> RefitLayer:
    weight = node.input[1]
    view, view0 = bridge.views.get(weight), original.views.get(weight)
    kept_in = torch.from_numpy(kept_in_mask).nonzero().flatten()
    module = view.owner if view is not None else None
    out_width = view.tensor.shape[0] if view is not None else 0
    kept_out = (torch.from_numpy(kept_out_mask).nonzero().flatten() if kept_out_mask is not None
                else torch.arange(out_width))
    layer = RefitLayer(node.name, node.op_type, weight, module, view0.owner if view0 is not None else None, kept_in, kept_out)
    layer.kind, layer.skip = layer_kind(node, module, view)
    if layer.skip is None and layer.kind != "depthwise" and view.torch_axis(reads.axis) != 1:
        layer.skip = "its weight's input axis is not torch's axis 1"
    if layer.skip is None and layer.kind != "depthwise":
        layer.skip = _too_many_unknowns(layer)
    return layer



def layer_kind(node, module, view) -> tuple[str, str | None]:
    if node.op_type == "MatMul" or module is None or view.attr != "weight":
        return "", f"{node.op_type}: only Conv and Gemm layers are refitted"
    if isinstance(module, nn.Linear):
        return "linear", None
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return "conv", f"Conv with padding mode {module.padding_mode!r} / {module.padding!r}"
        if module.groups == 1:
            return "conv", None
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise", None
        return "conv", f"grouped Conv (group={module.groups}) that is not depthwise"
    return "", f"{type(module).__name__}: only 2-D Conv and Gemm layers are refitted"


class _Captured(Exception):
    pass


def _run_to(model: nn.Module, module: nn.Module, x: torch.Tensor, before: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input, output) of `module` when `model` runs on `x`; the forward pass stops there, before
    the module runs (output None) or right after it."""
    box = {}

    def hook(_, inputs, out=None):
        box["x"], box["y"] = inputs[0], out
        raise _Captured

    handle = module.register_forward_pre_hook(hook) if before else module.register_forward_hook(hook)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    if "x" not in box:
        raise RuntimeError("the layer was not reached by the forward pass")
    return box["x"], box["y"]


def capture(model: nn.Module, module: nn.Module, x: torch.Tensor, output: bool) -> torch.Tensor:
    """The input (output=False) or the output of `module` when `model` runs on `x`; the forward pass
    stops there."""
    inp, out = _run_to(model, module, x, before=not output)
    return out if output else inp


def capture_pair(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and the output of `module` when `model` runs on `x`, in one pass stopped there."""
    return _run_to(model, module, x, before=False)


def has_bias(layer: RefitLayer) -> bool:
    if layer.kind == "matmul":
        return layer.bias_view is not None
    return getattr(layer.module, "bias", None) is not None


def _weight(layer: RefitLayer) -> torch.Tensor:
    return layer.weight_view.tensor if layer.kind == "matmul" else layer.module.weight


def _bias(layer: RefitLayer) -> torch.Tensor | None:
    if not has_bias(layer):
        return None
    return layer.bias_view.tensor if layer.kind == "matmul" else layer.module.bias


def current_weights(layer: RefitLayer) -> torch.Tensor:
    """W0 in the solver's layout [G, K, O]: kept input positions (then the bias) by kept outputs."""
    w = _weight(layer).detach()
    bias = _bias(layer).detach() if has_bias(layer) else None
    if layer.kind == "matmul":  # [in, out]
        rows = w[layer.kept_in][:, layer.kept_out]
        if bias is not None:
            rows = torch.cat([rows, bias[layer.kept_out][None, :]], 0)
        return rows[None]
    if layer.kind == "depthwise":
        rows = w[layer.kept_in].reshape(len(layer.kept_in), -1)
        if bias is not None:
            rows = torch.cat([rows, bias[layer.kept_in][:, None]], 1)
        return rows[:, :, None]
    rows = w[layer.kept_out][:, layer.kept_in].reshape(len(layer.kept_out), -1).T
    if bias is not None:
        rows = torch.cat([rows, bias[layer.kept_out][None, :]], 0)
    return rows[None]


@torch.no_grad()
def write_weights(layer: RefitLayer, W: torch.Tensor) -> None:
    w = _weight(layer)
    biased = has_bias(layer)
    W = W.to(w.dtype)
    if layer.kind == "matmul":
        W = W[0]
        w[layer.kept_in[:, None], layer.kept_out[None, :]] = W[:-1] if biased else W
        if biased:
            _bias(layer)[layer.kept_out] = W[-1]
        return
    if layer.kind == "depthwise":
        W = W[:, :, 0]
        kernel = W[:, :-1] if biased else W
        w[layer.kept_in] = kernel.reshape(w[layer.kept_in].shape)
        if biased:
            layer.module.bias[layer.kept_in] = W[:, -1]
        return
    W = W[0]
    kernel = W[:-1] if biased else W
    block = w[layer.kept_out][:, layer.kept_in]
    w[layer.kept_out[:, None], layer.kept_in[None, :]] = kernel.T.reshape(block.shape)
    if biased:
        layer.module.bias[layer.kept_out] = W[-1]


def pick_positions(layer: RefitLayer, positions: int, per_image: int | None, generator) -> torch.Tensor | None:
    """The conv output positions sampled from one batch (None: all of them)."""
    if layer.kind in ("linear", "matmul") or per_image is None or per_image >= positions:
        return None
    return torch.randperm(positions, generator=generator)[:per_image]


def output_positions(y: torch.Tensor) -> int:
    return int(math.prod(y.shape[2:]))


def target_rows(layer: RefitLayer, y: torch.Tensor, pick: torch.Tensor | None) -> torch.Tensor:
    """Y [rows, G, O]: the original's output of the layer at the picked positions."""
    if layer.kind in ("linear", "matmul"):
        Y = y.reshape(-1, y.shape[-1])[:, layer.kept_out]
        if layer.kind == "matmul" and has_bias(layer):  # the target is the original's output after its bias
            Y = Y + layer.original_bias.tensor.detach()[layer.kept_out].to(Y.dtype)
        return Y[:, None]
    out = y.flatten(2)  # [N, O, L]
    if pick is not None:
        out = out[:, :, pick.to(out.device)]
    n, _, positions = out.shape
    if layer.kind == "depthwise":
        return out[:, layer.kept_in].permute(0, 2, 1).reshape(n * positions, len(layer.kept_in), 1)
    return out[:, layer.kept_out].permute(0, 2, 1).reshape(n * positions, -1)[:, None]


def input_rows(layer: RefitLayer, x: torch.Tensor, pick: torch.Tensor | None) -> torch.Tensor:
    """X [rows, G, K]: the pruned model's input to the layer (im2col patches of the kept channels at
    the picked positions for a conv), and a 1 for the bias."""
    ones = has_bias(layer)
    if layer.kind in ("linear", "matmul"):
        X = x.reshape(-1, x.shape[-1])[:, layer.kept_in]
        if ones:
            X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype, device=X.device)], 1)
        return X[:, None]
    m = layer.module
    cols = F.unfold(x[:, layer.kept_in], m.kernel_size, m.dilation, m.padding, m.stride)  # [N, C*k, L]
    if pick is not None:
        cols = cols[:, :, pick.to(cols.device)]
    n, _, positions = cols.shape
    if layer.kind == "depthwise":
        c = len(layer.kept_in)
        X = cols.reshape(n, c, -1, positions).permute(0, 3, 1, 2).reshape(n * positions, c, -1)
        if ones:
            X = torch.cat([X, torch.ones(*X.shape[:2], 1, dtype=X.dtype, device=X.device)], 2)
        return X
    X = cols.permute(0, 2, 1).reshape(n * positions, -1)
    if ones:
        X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype, device=X.device)], 1)
    return X[:, None]


def rows_of(layer: RefitLayer, x: torch.Tensor, y: torch.Tensor, per_image: int | None, generator) -> tuple:
    """(X [rows, G, K], Y [rows, G, O]) for one batch: the layer's input x (pruned model) and the
    original's output y; conv positions sampled to `per_image` per image (None: all)."""
    pick = pick_positions(layer, output_positions(y), per_image, generator)
    return input_rows(layer, x, pick), target_rows(layer, y, pick)


TARGET_CACHE_BYTES = 512 * 1024**2  # target rows kept from one pass of the original; past it a layer runs the original again


def layer_generator(seed: int, index: int) -> torch.Generator:
    """The generator that draws the sampled positions of the refit's `index`-th layer."""
    return torch.Generator().manual_seed(seed * 1000 + index)


class OriginalTargets:
    """Every layer's target rows (the original's output at the sampled positions), taken by one
    forward pass of the original per batch instead of one pass up to each layer per layer: the
    original does not change while the pruned model is refitted layer by layer. The positions are
    drawn from each layer's own generator in the order the per-layer path draws them (estimate
    batches, then validation batches), so both paths give the same rows. Layers whose rows would
    pass `budget` bytes are left to the per-layer path. Layers are keyed by their index in the
    refit's list; skipped ones are left out."""

    def __init__(self, layers: list[RefitLayer], images: int, seed: int, budget: int | None = None):
        self.layers = {i: layer for i, layer in enumerate(layers) if layer.skip is None}
        self.per_image = {i: positions_per_image(layer, images, current_weights(layer).shape[1])
                          for i, layer in self.layers.items()}
        self.budget = TARGET_CACHE_BYTES if budget is None else budget
        self.generators = {i: layer_generator(seed, i) for i in self.layers}
        self.rows: dict[int, dict[str, list] | None] = {i: {"estimate": [], "validate": []} for i in self.layers}
        self.bytes = 0

    @torch.no_grad()
    def collect(self, original: nn.Module, data, split: str) -> None:
        seen: set[int] = set()

        def hook_for(i):
            def hook(_, inputs, y):
                if i in seen or self.rows[i] is None:
                    return
                seen.add(i)
                layer = self.layers[i]
                pick = pick_positions(layer, output_positions(y), self.per_image[i], self.generators[i])
                Y = target_rows(layer, y, pick).cpu()
                if self.bytes + Y.numel() * Y.element_size() > self.budget:
                    self.bytes -= sum(t.numel() * t.element_size() for rows in self.rows[i].values() for _, t in rows)
                    self.rows[i] = None
                    return
                self.bytes += Y.numel() * Y.element_size()
                self.rows[i][split].append((pick, Y))
            return hook

        handles = [layer.original.register_forward_hook(hook_for(i)) for i, layer in self.layers.items()]
        try:
            for x, _ in data.batches(BATCH):
                seen.clear()
                original(x)
        finally:
            for handle in handles:
                handle.remove()

    def of(self, index: int, split: str) -> list | None:
        """(pick, Y) per batch of `split` for the `index`-th layer, or None where it was not kept."""
        rows = self.rows.get(index)
        return None if rows is None else rows[split]


def accumulate(layer: RefitLayer, pruned: nn.Module, original: nn.Module, data, W0: torch.Tensor,
               per_image: int | None, generator, targets: list | None = None,
               inputs: list | None = None) -> NormalEquations:
    """The layer's normal equations over `data`; `targets` (OriginalTargets.of) spares running the
    original up to the layer for every batch, `inputs` (the pruned model's input to the layer per
    batch, from a LayerSweep) running the pruned model up to it."""
    eq = NormalEquations(W0.shape[0], W0.shape[1], W0.shape[2])
    for b, (x, _) in enumerate(data.batches(BATCH)):
        inp = capture(pruned, layer.module, x, output=False) if inputs is None else inputs[b]
        if targets is None:
            y = capture(original, layer.original, x, output=True)
            pick = pick_positions(layer, output_positions(y), per_image, generator)
            Y = target_rows(layer, y, pick)
        else:
            pick, Y = targets[b]
        eq.add(input_rows(layer, inp, pick).cpu(), Y.cpu())
    return eq


def positions_per_image(layer: RefitLayer, images: int, unknowns: int) -> int | None:
    """Conv output positions to sample per image: about ROWS_PER_UNKNOWN rows per unknown in all."""
    if layer.kind in ("linear", "matmul"):
        return None
    return max(1, math.ceil(ROWS_PER_UNKNOWN * unknowns / max(images, 1)))


@torch.no_grad()
def refit(layers: list[RefitLayer], pruned: nn.Module, original: nn.Module, estimate, validate, seed: int = 0) -> list[dict]:
    """Refit `layers` in order, in place in `pruned`; one record per layer."""
    was = pruned.training, original.training
    pruned.eval()
    original.eval()
    records: dict[int, dict] = {}
    try:
        targets = OriginalTargets(layers, len(estimate) + len(validate), seed)
        targets.collect(original, estimate, "estimate")
        targets.collect(original, validate, "validate")

        def fit_layer(i: int, estimate_inputs: list | None = None, validate_inputs: list | None = None) -> None:
            layer = layers[i]
            W0 = current_weights(layer)
            per_image, generator = targets.per_image[i], layer_generator(seed, i)
            est = accumulate(layer, pruned, original, estimate, W0, per_image, generator, targets.of(i, "estimate"),
                             estimate_inputs)
            val = accumulate(layer, pruned, original, validate, W0, per_image, generator, targets.of(i, "validate"),
                             validate_inputs)
            fit = ridge_fit(est, val, W0.cpu())
            if fit.changed:
                write_weights(layer, fit.W.to(W0.device))
            alphas = [a for a in fit.alphas if a is not None]
            records[i] = {**_describe(layer), "refitted": fit.changed, "unknowns": W0.shape[1], "rows": est.rows + val.rows,
                          "alpha": (alphas[0] if len(fit.alphas) == 1 and alphas else None),
                          "groups_refitted": f"{len(alphas)}/{len(fit.alphas)}",
                          "validation_error_before": fit.error_before, "validation_error_after": fit.error_after,
                          **({} if fit.changed else {"reason": "keeping the pruned weights fit the validation rows best"})}

        todo = [i for i, layer in enumerate(layers) if layer.skip is None]
        for i, layer in enumerate(layers):
            if layer.skip is not None:
                records[i] = {**_describe(layer), "refitted": False, "reason": layer.skip}
        modules = [layers[i].module for i in todo]
        if todo and LayerSweep.supports(pruned, modules):  # one pass of the pruned model, not one per layer
            index = {id(layers[i].module): i for i in todo}
            estimate_batches = [x for x, _ in estimate.batches(BATCH)]
            batches = estimate_batches + [x for x, _ in validate.batches(BATCH)]
            for module, inputs in LayerSweep(pruned, modules, batches):
                fit_layer(index[id(module)], inputs[:len(estimate_batches)], inputs[len(estimate_batches):])
        for i in todo:  # what the sweep did not reach (its activations passed its budget), layer by layer
            if i not in records:
                fit_layer(i)
    finally:
        pruned.train(was[0])
        original.train(was[1])
    return [records[i] for i in range(len(layers))]


def _describe(layer: RefitLayer) -> dict:
    return {"layer": layer.node, "op": layer.op, "kind": layer.kind,
            "kept_inputs": len(layer.kept_in), "kept_outputs": len(layer.kept_out)}
