"""ONNX <-> torch: a trainable module whose tensors map one-to-one to ONNX initializer names.

onnx2torch turns Conv/BatchNormalization/Gemm into real nn modules (their parameters train) and
every other constant into a buffer read through `get_attr`. The bridge records, for each ONNX
initializer, the torch tensor that holds it and how its layout differs (Gemm with transB=0 holds
W transposed, scaled by alpha), so masks computed on ONNX axes apply to torch tensors and trained
values go back into the ONNX graph. Weight-like constants that onnx2torch left as buffers (MatMul
weights) become parameters, so they train too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from acc.errors import InputError
from acc.passes.inputs import declared_dims
from acc.prune.onnx2torch_compat import onnx2torch as _onnx2torch


@dataclass
class TensorView:
    """Where an ONNX initializer lives in torch (a module attribute, so it survives `.to(device)`),
    and how to convert between the two layouts."""

    owner: nn.Module
    attr: str
    transposed: bool = False  # torch holds the 2-D ONNX array transposed
    scale: float = 1.0  # torch holds scale * ONNX values

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.owner, self.attr)

    def to_onnx(self) -> np.ndarray:
        value = self.tensor.detach().cpu().numpy()
        if self.scale != 1.0:
            value = value / self.scale
        return np.ascontiguousarray(value.T if self.transposed else value)

    def torch_axis(self, onnx_axis: int) -> int:
        return (1 - onnx_axis) if self.transposed else onnx_axis


class LiveTensors(Mapping):
    """ONNX initializer name -> its current torch tensor (follows `.to(device)` and reloads)."""

    def __init__(self, views: dict[str, TensorView]):
        self._views = views

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._views[name].tensor

    def __iter__(self):
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def conversion_error(model: onnx.ModelProto, err: Exception) -> str:
    """One line naming the node whose converter failed (found by converting node by node)."""
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    try:
        graph = OnnxGraph(safe_shape_inference(model).graph)
        opsets = {o.domain: o.version for o in model.opset_import}
        for node in graph.nodes.values():
            try:
                get_converter(node.operation_type, opsets.get(node.domain, 1), node.domain)(node, graph)
            except Exception as node_err:  # noqa: BLE001 - any converter failure is the user's answer
                return f"{node.operation_type} '{node.name}' cannot be converted to torch for training ({_one_line(node_err)})"
    except Exception:  # noqa: BLE001 - the search for the node is best effort
        pass
    return f"the model cannot be converted to torch for training ({_one_line(err)})"


class _NodeFailure(Exception):
    def __init__(self, fx_node, error):
        super().__init__()
        self.fx_node, self.error = fx_node, error


class _NamingInterpreter(torch.fx.Interpreter):
    def run_node(self, n):
        try:
            return super().run_node(n)
        except Exception as err:  # noqa: BLE001 - re-raised with the node's name
            raise _NodeFailure(n, err) from None


def _probe_inputs(model: onnx.ModelProto, batch: int) -> list[torch.Tensor] | None:
    elem_types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    gen = torch.Generator().manual_seed(0)
    feeds = []
    for name, declared in declared_dims(model).items():
        if not all(isinstance(d, int) for d in declared):
            return None
        dims = list(declared)
        if len(dims) >= 3:
            dims[0] = batch  # image-like inputs are batched in training
        dtype = torch.from_numpy(np.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(elem_types[name]))).dtype
        feeds.append(torch.randn(dims, generator=gen).to(dtype) if dtype.is_floating_point else torch.zeros(dims, dtype=dtype))
    return feeds


def check_runs(module: torch.fx.GraphModule, model: onnx.ModelProto, nodes: dict, batch: int = 2) -> None:
    """Run the converted module once on a batch of `batch`: a converter that computes something
    other than the ONNX op (a wrong rank, a batch-1 assumption) fails here, as one line that
    names the node, instead of as a traceback in the middle of training."""
    feeds = _probe_inputs(model, batch)
    if feeds is None:
        return
    try:
        with torch.no_grad():
            _NamingInterpreter(module).run(*feeds)
    except _NodeFailure as failure:
        n = failure.fx_node
        while n.op != "call_module" and n.all_input_nodes:
            n = n.all_input_nodes[0]  # getitem of a multi-output node: name that node
        node = nodes.get(n.target) if n.op == "call_module" else None
        where = f"{node.op_type} '{node.name}'" if node is not None else f"'{n.name}'"
        raise InputError(
            f"{where} does not run in torch on a batch of {batch} after conversion ({_one_line(failure.error)})"
        ) from None


class TorchModel:
    """A converted model: `module` trains; `views[name]` is the torch side of ONNX initializer `name`."""

    def __init__(self, model: onnx.ModelProto, trainable: set[str] | None = None):
        onnx2torch = _onnx2torch()
        from onnx2torch.onnx_graph import OnnxGraph

        self.model = model
        try:
            self.module: torch.fx.GraphModule = onnx2torch.convert(model, attach_onnx_mapping=True)
        except Exception as err:
            raise InputError(conversion_error(model, err)) from None
        self.module.eval()
        nodes = {OnnxGraph.generate_node_name(n): n for n in model.graph.node}
        check_runs(self.module, model, nodes)
        self.views: dict[str, TensorView] = {}
        for name, submodule in self.module.named_children():
            node = nodes.get(name)
            if node is not None:
                self._map_module(node, submodule)
        self._map_get_attrs()
        self._promote(trainable or set())

    def _map_module(self, node: onnx.NodeProto, m: nn.Module) -> None:
        inputs = list(node.input)
        if isinstance(m, (nn.modules.conv._ConvNd,)):
            self.views[inputs[1]] = TensorView(m, "weight")
            if m.bias is not None and len(inputs) > 2:
                self.views[inputs[2]] = TensorView(m, "bias")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            for i, attr in enumerate(("weight", "bias", "running_mean", "running_var"), start=1):
                self.views[inputs[i]] = TensorView(m, attr)
        elif isinstance(m, nn.Linear):
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            self.views[inputs[1]] = TensorView(m, "weight", transposed=not a.get("transB", 0), scale=float(a.get("alpha", 1.0)))
            if m.bias is not None and len(inputs) > 2:
                self.views[inputs[2]] = TensorView(m, "bias", scale=float(a.get("beta", 1.0)))

    def _map_get_attrs(self) -> None:
        modules = dict(self.module.named_modules())
        for fx_node in self.module.graph.nodes:
            if fx_node.op != "call_module":
                continue
            mapping = getattr(modules[fx_node.target], "onnx_mapping", None)
            if mapping is None:
                continue
            for arg, onnx_name in zip(fx_node.args, mapping.inputs):
                if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and onnx_name not in self.views:
                    owner_path, attr = arg.target.rsplit(".", 1)
                    self.views[onnx_name] = TensorView(self.module.get_submodule(owner_path), attr)

    def _promote(self, names: set[str]) -> None:
        """Make the named get_attr buffers trainable parameters (same storage, same fx targets)."""
        if not hasattr(self.module, "initializers"):
            return
        container = self.module.get_submodule("initializers")
        for buffer_name, buffer in list(container.named_buffers(recurse=False)):
            onnx_names = [n for n, v in self.views.items() if v.owner is container and v.attr == buffer_name and n in names]
            if not onnx_names or not buffer.is_floating_point():
                continue
            delattr(container, buffer_name)
            container.register_parameter(buffer_name, nn.Parameter(buffer.detach().clone()))

    def to_onnx(self) -> onnx.ModelProto:
        """The original graph with every mapped initializer replaced by its current torch value."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        for t in out.graph.initializer:
            view = self.views.get(t.name)
            if view is not None:
                old = numpy_helper.to_array(t)
                t.CopyFrom(numpy_helper.from_array(view.to_onnx().astype(old.dtype).reshape(old.shape), t.name))
        return out

    @property
    def tensors(self) -> LiveTensors:
        return LiveTensors(self.views)

    def to(self, device) -> "TorchModel":
        self.module.to(device)
        return self

    def __call__(self, *inputs):
        return self.module(*inputs)
