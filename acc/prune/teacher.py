"""The original model as the distillation teacher, run where it is cheapest.

The teacher only ever runs forward, without gradients, on every training batch, every validation
and every search candidate. On the CPU, onnxruntime runs the original graph faster than its
onnx2torch module does (batch 128: ResNet-20 2.8-3.2x, ResNet-56 2.4-2.6x, MobileNetV2 5.8-6.0x,
VGG-16 1.2x; benchmarks/results/teacher_speed.json), so a CPU run distils from an onnxruntime session. On a GPU, or when
the graph does not run in onnxruntime at the training batch, or runs there to other figures than
the torch module (checked on the first batch), the torch module is the teacher.
"""

from __future__ import annotations

import onnx
import torch

# The first batch's outputs from onnxruntime must match the torch module's to this (relative to the
# output's scale): both run the same float32 graph, so anything larger is a conversion difference.
AGREEMENT = 1e-3


def teacher_for(graph: onnx.ModelProto, module: torch.nn.Module, device) -> torch.nn.Module | "OnnxRuntimeTeacher":
    """The teacher for `graph` on `device`: an onnxruntime session on the CPU (checked against
    `module`, the graph's torch module, on its first batch), else `module` on the device."""
    device = torch.device(device)
    module = module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if device.type != "cpu":
        return module
    try:
        return OnnxRuntimeTeacher(graph, module)
    except Exception:  # noqa: BLE001 - a graph onnxruntime refuses at load time is taught by torch
        return module


def free_batch(graph: onnx.ModelProto) -> onnx.ModelProto:
    """`graph` with the leading dimension of every input and output symbolic and no intermediate
    shapes, so onnxruntime takes any batch (normalised graphs are written at batch 1)."""
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    del model.graph.value_info[:]
    for value in list(model.graph.input) + list(model.graph.output):
        shape = value.type.tensor_type.shape
        if value.type.tensor_type.HasField("shape") and len(shape.dim) > 0:
            shape.dim[0].Clear()
            shape.dim[0].dim_param = "batch"
    return model


def teacher_session(graph: onnx.ModelProto):
    """An onnxruntime CPU session for a teacher graph: torch's thread count, idle threads asleep."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Between batches the CPU belongs to torch's backward pass: idle onnxruntime threads sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeTeacher:
    """Callable like the torch module: CPU tensor in, the outputs (a tensor, or a tuple for several)
    out. Until its first batch agrees with the torch module's it is on probation; a batch that
    fails or disagrees hands the teaching to the torch module for good."""

    def __init__(self, graph: onnx.ModelProto, module: torch.nn.Module):
        import onnxruntime as ort

        self.session = teacher_session(free_batch(graph))
        self.input_name = self.session.get_inputs()[0].name
        # A batch onnxruntime cannot run is handled (the torch module teaches): no error line on stderr.
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        self.module = module
        self.checked = False
        self.fallback = False

    def eval(self):
        return self

    def __call__(self, x: torch.Tensor):
        if self.fallback:
            return self.module(x)
        try:
            got = self._run(x)
        except Exception:  # noqa: BLE001 - e.g. a Reshape to a constant batch-1 shape
            self.fallback = True
            return self.module(x)
        if not self.checked:
            want = self.module(x)
            if not _agree(got, want):
                self.fallback = True
                return want
            self.checked = True
        return got

    def _run(self, x: torch.Tensor):
        outs = self.session.run(None, {self.input_name: x.detach().contiguous().numpy()}, self.run_options)
        tensors = tuple(torch.from_numpy(o) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors


def _agree(got, want) -> bool:
    got = got if isinstance(got, tuple) else (got,)
    want = tuple(want) if isinstance(want, (tuple, list)) else (want,)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return False
        if w.is_floating_point():
            scale = float(w.abs().max()) or 1.0
            if float((g.to(w.dtype) - w).abs().max()) > AGREEMENT * scale:
                return False
        elif not torch.equal(g.to(w.dtype), w):
            return False
    return True
