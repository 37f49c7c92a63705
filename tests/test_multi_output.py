"""Models with several outputs: every output is distilled, and a small detector (backbone, an
FPN-like Resize + Concat, box / score / segmentation heads) prunes and compiles end to end on
unlabelled images, each output verified."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from acc import api
from acc.cli import main
from acc.errors import InputError
from acc.passes.verify import RELATIVE_TOLERANCE
from acc.prune.objective import Objective, choose_supervision, evaluate, output_kinds
from acc.data.tensor_data import TensorData

OUTPUTS = ["boxes", "scores", "segmentation"]


class TinyDetector(nn.Module):
    """Two stride-2 stages, a top-down path (1x1 lateral, nearest Resize x2, Concat with the
    stride-2 features), a shared head split into boxes and scores, and a segmentation head
    resized back to the input and soft-maxed over its classes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(24, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.lateral = nn.Conv2d(32, 16, 1)
        self.fuse = nn.Sequential(nn.Conv2d(40, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Conv2d(24, 10, 1)  # 2 anchors: 8 box values, 2 scores
        self.seg = nn.Conv2d(24, 3, 1)

    def forward(self, x):
        c2 = self.c2(self.stem(x))
        up = F.interpolate(self.lateral(self.c3(c2)), scale_factor=2.0, mode="nearest")
        p2 = self.fuse(torch.cat([c2, up], 1))
        box, score = self.head(p2).split([8, 2], 1)
        boxes = box.permute(0, 2, 3, 1).reshape(box.shape[0], -1, 4)
        scores = torch.sigmoid(score).flatten(1)
        seg = torch.softmax(F.interpolate(self.seg(p2), scale_factor=2.0, mode="bilinear", align_corners=False), 1)
        return boxes, scores, seg


def export(module, path, output_names, shape=(1, 3, 16, 16)):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*shape),), str(path), input_names=["input"], output_names=output_names,
                          opset_version=17, do_constant_folding=False, dynamo=False)
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    torch.manual_seed(0)
    return export(TinyDetector(), tmp_path_factory.mktemp("detector") / "detector.onnx", OUTPUTS)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Unlabelled uint8 images at another size than the model's (resized by the data layer)."""
    path = tmp_path_factory.mktemp("images") / "images.npy"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (96, 5, 6, 3)).astype(np.float32)
    smooth = np.kron(base, np.ones((1, 4, 4, 1)))  # 20x24 images (the model takes 16x16), smooth at 4 px
    np.save(path, np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8))
    return path


def _graph(output_op: str | None, rank: int = 2, axis: int = 1) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])
    shape = [1, 5] if rank == 2 else [1, 5, 1]
    nodes, last = [], "x"
    if rank != 2:
        nodes.append(helper.make_node("Unsqueeze", ["x", "axes"], ["u"]))
        last = "u"
    if output_op:
        attrs = {"axis": axis} if output_op in ("Softmax", "LogSoftmax") else {}
        nodes.append(helper.make_node(output_op, [last], ["p"], **attrs))
        last = "p"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    axes = [helper.make_tensor("axes", TensorProto.INT64, [1], [2])] if rank != 2 else []
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], axes))


@pytest.mark.parametrize("op, rank, axis, kind", [
    (None, 2, 1, "logits"), ("Softmax", 2, 1, "probabilities"), ("Softmax", 2, -1, "probabilities"),
    ("LogSoftmax", 2, 1, "log_probabilities"), ("Sigmoid", 2, 1, "values"), ("Softmax", 2, 0, "values"),
    (None, 3, 1, "values"),
])
def test_output_kinds_follow_rank_and_the_producing_op(op, rank, axis, kind):
    assert output_kinds(_graph(op, rank, axis)) == [kind]


class TwoHeads(nn.Module):
    def __init__(self, scale_b: float = 1.0):
        super().__init__()
        self.a, self.b, self.scale_b = nn.Linear(4, 3), nn.Linear(4, 6), scale_b

    def forward(self, x):
        return self.a(x), (self.scale_b * self.b(x)).view(-1, 2, 3)


@torch.no_grad()
def test_every_output_is_distilled_and_heads_weigh_alike():
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    for scale in (1.0, 1000.0):
        torch.manual_seed(0)
        teacher = TwoHeads(scale)
        student = TwoHeads(scale)
        student.load_state_dict(teacher.state_dict())
        objective = Objective(teacher, use_labels=False)
        assert float(objective(student(x), x, None)) == pytest.approx(0.0, abs=1e-5)
        student.b.weight.mul_(0.5)  # only the second head drifts
        terms = objective.terms(student(x), x, None)
        assert float(terms[0]) == pytest.approx(0.0, abs=1e-5) and float(terms[1]) > 0.05
        if scale == 1.0:
            small = float(terms[1])
        else:  # a head 1000x larger, drifting alike, costs the same: MSE over the teacher's variance
            assert float(terms[1]) == pytest.approx(small, rel=1e-3)


@torch.no_grad()
def test_labels_score_the_classifier_and_the_teacher_the_rest():
    torch.manual_seed(0)
    teacher, student = TwoHeads(), TwoHeads()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    terms = Objective(teacher, use_labels=True).terms(student(x), x, y)
    assert float(terms[0]) == pytest.approx(float(F.cross_entropy(student(x)[0], y)))
    assert float(terms[1]) > 0
    data = TensorData(x, y)
    scores = evaluate(student, data, Objective(teacher, use_labels=True))
    assert set(scores) >= {"loss", "accuracy", "output_losses"} and len(scores["output_losses"]) == 2
    assert scores["loss"] == pytest.approx(sum(scores["output_losses"]) / 2, rel=1e-5)
    # Labels on a model without a classifier output: the default distils, asking for them is an error.
    assert choose_supervision(["values", "values"], True, None) == (False, True)
    assert choose_supervision(["logits", "values"], True, None) == (True, True)
    assert choose_supervision(["logits"], True, None) == (True, False)
    with pytest.raises(InputError, match="classifier output"):
        choose_supervision(["values", "values"], True, True)


def _check_outputs_verified(report):
    verified = {d["output"]: d for d in report["verification"]}
    assert set(verified) == set(OUTPUTS)
    for d in verified.values():
        assert d["max_abs_error"] <= RELATIVE_TOLERANCE * d["max_abs_output"] + 1e-6, d


def test_detector_prunes_end_to_end_on_unlabelled_images(detector, images, tmp_path, capsys):
    out, report_path = tmp_path / "pruned.onnx", tmp_path / "report.json"
    code = main(["prune", str(detector), "--data", str(images), "--uniform", "0.3", "-o", str(out), "--report", str(report_path),
                 "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "32", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text())
    assert report["data"]["augment"] == "resize"  # no labels: no geometry change by default
    assert report["objective"] == "distillation from the original model, all 3 outputs"
    _check_outputs_verified(report)
    assert 1.4 < report["params"]["reduction_dense"] < 2.5  # 0.3 of every group: about 2x
    assert len(report["accuracy_after"]["val"]["output_losses"]) == 3
    small = onnx.load(out)
    assert [o.name for o in small.graph.output] == OUTPUTS
    # Asking for labels on a model without a classifier output: one line, exit 2, nothing written.
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, inputs=np.load(images)[:8], labels=np.zeros(8, dtype=np.int64))
    code = main(["prune", str(detector), "--data", str(labelled), "--uniform", "0.3", "-o", str(tmp_path / "x.onnx"),
                 "--labels", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "classifier output" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_detector_compiles_end_to_end(detector, images, tmp_path):
    result = api.compile(detector, "1.5x", images, tmp_path / "out", rounds=1, budget_epochs=2, search_steps=2,
                         eval_images=32, search_finetune_steps=0, batch_size=32, progress=False)
    report = result.report
    assert report["params"]["reduction_dense"] >= 1.4
    _check_outputs_verified(report["rounds_detail"][0])
    assert [o.name for o in onnx.load(result.model_path).graph.output] == OUTPUTS
