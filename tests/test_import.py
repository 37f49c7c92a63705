"""Import: bad files are clear errors; exporters' quirks are normalised away."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from acc.errors import InputError
from acc.passes.analysis import analyze
from acc.passes.importer import import_model
from acc.passes.load import load_model
from acc.passes.verify import compare


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_not_onnx(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_text("hello, I am not a protobuf\n" * 10)
    with pytest.raises(InputError, match="ONNX"):
        load_model(p)


def test_truncated(zoo_path, tmp_path):
    data = zoo_path("residual").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        load_model(p)


def test_external_data_outside_the_folder_is_refused(zoo_path, tmp_path):
    model = onnx.load(zoo_path("residual"))
    inside = tmp_path / "inside"
    inside.mkdir()
    onnx.save_model(model, inside / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert load_model(inside / "m.onnx").graph.initializer  # the honest case loads
    m = onnx.load(inside / "m.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.bin"
    (tmp_path / "outside.bin").write_bytes((inside / "weights.bin").read_bytes())
    onnx.save_model(m, inside / "evil.onnx")
    with pytest.raises(InputError, match="outside the model's folder"):
        load_model(inside / "evil.onnx")


def _old_style_model():
    """Opset 9, Constant nodes for weights, symbolic batch, auto_pad SAME_UPPER."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32))
    nodes = [
        helper.make_node("Constant", [], ["w"], value=w, name="cw"),
        helper.make_node("Constant", [], ["w2"], value=w2, name="cw2"),
        helper.make_node("Conv", ["x", "w"], ["a"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 7, 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 4, 4])
    return helper.make_model(helper.make_graph(nodes, "old", [x], [y]), opset_imports=[helper.make_opsetid("", 9)])


def test_old_graph_is_normalised_and_still_equal():
    original = _old_style_model()
    model = import_model(original)
    assert not any(n.op_type == "Constant" for n in model.graph.node)
    assert all(n.name for n in model.graph.node)
    assert model.opset_import[0].version >= 11
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert not any(a.name == "auto_pad" for a in conv.attribute)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    diff = compare(original, model)[0]
    assert diff.max_abs_error <= 1e-6 * diff.max_abs_output
    assert [g.width for g in analyze(model).groups] == [3, 4, 2]


def test_dynamo_graph_loses_allowzero_and_shape_arithmetic(zoo_path):
    model = import_model(zoo_path("flatten_classifier", dynamo=True))
    for node in model.graph.node:
        assert node.op_type not in ("Shape", "Gather", "Constant")
        if node.op_type == "Reshape":
            assert not any(a.name == "allowzero" and a.i for a in node.attribute)


def test_an_if_on_a_folded_condition_becomes_its_branch(zoo_path):
    # The legacy export of LocalResponseNorm tests the input's rank in an If: with shapes fixed the
    # condition folds, and the branch it takes replaces the If (onnx2torch converts no If).
    path = zoo_path("unknown_op")
    assert any(n.op_type == "If" for n in load_model(path).graph.node)
    model = import_model(path)
    assert not any(n.op_type in ("If", "Constant") for n in model.graph.node)
    used = {i for n in model.graph.node for i in n.input}
    assert all(t.name in used for t in model.graph.initializer)  # nothing left behind
    diff = compare(load_model(path), model)[0]
    assert diff.max_abs_error <= 1e-6 * diff.max_abs_output
