"""The distillation teacher: onnxruntime on the CPU where it gives the torch module's outputs, the
torch module where it does not."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from acc.passes.importer import import_model
from acc.prune.bridge import TorchModel
from acc.prune.objective import Objective, evaluate
from acc.prune.teacher import OnnxRuntimeTeacher, teacher_for
from acc.data.tensor_data import TensorData


def _teacher(path):
    graph = import_model(path)
    module = TorchModel(graph).module
    return graph, module, teacher_for(graph, module, "cpu")


def test_cpu_teacher_is_onnxruntime_and_matches_torch(model_path):
    graph, module, teacher = _teacher(model_path("resnet20"))
    assert isinstance(teacher, OnnxRuntimeTeacher)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        want = module(x)
    got = teacher(x)  # the first batch is checked against the torch module
    assert teacher.checked and not teacher.fallback
    assert got.shape == want.shape == (6, 10)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # Later batches, at another size, come from onnxruntime alone.
    x2 = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(teacher(x2), module(x2), rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in module.parameters())


def test_several_outputs_come_back_as_a_tuple(zoo_path):
    graph, module, teacher = _teacher(zoo_path("two_heads"))
    x = torch.randn(4, 3, 8, 8)
    got, want = teacher(x), module(x)
    assert isinstance(got, tuple) and len(got) == 2 and not teacher.fallback
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def _batch_one_reshape() -> onnx.ModelProto:
    """Conv, then a Reshape to the constant [1, 32] that was written at batch 1 (as the dynamo
    exporter does inside attention): onnxruntime merges a batch of 2 into one row, torch keeps two."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 32], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Reshape", ["c", "shape"], ["out"])],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 32])], [w, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_graph_onnxruntime_runs_differently_is_taught_by_torch():
    graph = _batch_one_reshape()
    module = TorchModel(graph).module
    teacher = teacher_for(graph, module, "cpu")
    x = torch.randn(2, 3, 4, 4)
    got = teacher(x)
    assert teacher.fallback  # onnxruntime's [1, 64] is not torch's [2, 32]
    assert got.shape == (2, 32)
    torch.testing.assert_close(got, module(x))
    torch.testing.assert_close(teacher(x[:1]), module(x[:1]))


def test_a_batch_onnxruntime_cannot_run_is_taught_by_torch_without_an_error_line(capfd):
    """A Concat with a constant batch-1 operand (as a ViT's class token, exported at batch 1) fails in
    onnxruntime at a training batch: the torch module teaches, and nothing is printed."""
    token = numpy_helper.from_array(np.ones((1, 2, 4, 4), np.float32), "token")
    node = helper.make_node("Concat", ["x", "token"], ["y"], axis=1)
    graph = helper.make_model(helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4, 4])],
                                                [token]), opset_imports=[helper.make_opsetid("", 17)])
    module = torch.nn.Module()
    module.forward = lambda x: torch.cat([x, torch.ones(len(x), 2, 4, 4)], 1)
    teacher = OnnxRuntimeTeacher(graph, module)
    capfd.readouterr()
    got = teacher(torch.randn(2, 3, 4, 4))
    assert teacher.fallback and got.shape == (2, 5, 4, 4)
    assert capfd.readouterr().err == ""


def _student(graph):
    """The graph's torch module with its weights moved a little: a student that differs from the teacher."""
    student = TorchModel(graph).module
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student


def test_distillation_loss_is_the_same_with_either_teacher(model_path):
    graph, module, teacher = _teacher(model_path("resnet20"))
    student = _student(graph)
    data = TensorData(torch.randn(20, 3, 32, 32), torch.randint(0, 10, (20,)))
    by_torch = evaluate(student, data, Objective(module, distill_weight=0.9), batch_size=8)
    by_onnxruntime = evaluate(student, data, Objective(teacher, distill_weight=0.9), batch_size=8)
    assert by_torch["loss"] > 0
    assert abs(by_torch["loss"] - by_onnxruntime["loss"]) <= 1e-4 * by_torch["loss"]


class _Counting:
    """A teacher that counts the images it ran on."""

    def __init__(self, module):
        self.module, self.images = module, 0

    def __call__(self, x):
        self.images += len(x)
        return self.module(x)


def test_evaluation_runs_the_teacher_once_per_evaluation_set(model_path):
    graph, module, _ = _teacher(model_path("resnet20"))
    student = _student(graph)
    teacher = _Counting(module)
    objective = Objective(teacher, distill_weight=0.9)
    val = TensorData(torch.randn(20, 3, 32, 32), torch.randint(0, 10, (20,)))
    first = evaluate(student, val, objective, batch_size=8)
    assert teacher.images == 20
    # The student changes between evaluations (training); the teacher's outputs do not.
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(0.9)
    second = evaluate(student, val, objective, batch_size=8)
    assert teacher.images == 20 and second["loss"] != first["loss"]
    fresh = evaluate(student, val, Objective(_Counting(module), distill_weight=0.9), batch_size=8)
    assert second == fresh  # replayed outputs give the figures a fresh teacher gives
    # Another set, another batch size, or a batch whose images changed: the teacher runs.
    evaluate(student, TensorData(torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))), objective, batch_size=8)
    assert teacher.images == 26
    evaluate(student, val, objective, batch_size=5)
    assert teacher.images == 46
    val.inputs[0].add_(1.0)
    changed = evaluate(student, val, objective, batch_size=8)
    assert teacher.images == 54  # only the changed batch ran again
    assert changed == evaluate(student, val, Objective(_Counting(module), distill_weight=0.9), batch_size=8)
    evaluate(student, val, objective, batch_size=8)
    assert teacher.images == 54  # the changed batch's outputs replace its stale record


def test_the_memo_keeps_within_its_bytes_and_forgets_freed_sets(model_path):
    from acc.prune.teacher_memo import TeacherMemo

    graph, module, _ = _teacher(model_path("resnet20"))
    teacher = _Counting(module)
    objective = Objective(teacher, distill_weight=0.9)
    objective.memo = TeacherMemo(limit_bytes=8 * 10 * 4)  # one batch of 8 logits
    val = TensorData(torch.randn(20, 3, 32, 32), torch.randint(0, 10, (20,)))
    for _ in range(2):
        evaluate(module, val, objective, batch_size=8)
    assert teacher.images == 20 + 12 and objective.memo.bytes == 8 * 10 * 4
    del val
    assert objective.memo.bytes == 0 and not objective.memo._sets
