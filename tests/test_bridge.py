"""The torch bridge: converters acc adds to onnx2torch, and one-line errors for what it cannot take."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from acc import api
from acc.cli import main
from acc.errors import InputError
from acc.passes.importer import import_model
from acc.passes.verify import session
from acc.prune.bridge import TorchModel


def _graph(nodes, inits, x_shape, y_shape, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _average_pool(pads, include, ceil, strides=(2, 2), kernel=(3, 3), size=7, opset=17):
    attrs = dict(kernel_shape=list(kernel), strides=list(strides), pads=list(pads), count_include_pad=include, ceil_mode=ceil)
    model = _graph([helper.make_node("AveragePool", ["x"], ["y"], name="pool", **attrs)], [], [1, 2, size, size], None, opset)
    return import_model(model)


@pytest.mark.parametrize("opset", [11, 17, 19])
@pytest.mark.parametrize(
    "pads, include, ceil",
    [
        ([0, 0, 1, 1], 0, 0),  # TensorFlow SAME padding: the extra pad at the end
        ([0, 0, 1, 1], 1, 0),
        ([1, 0, 2, 1], 0, 1),
        ([1, 1, 1, 1], 0, 1),
        ([2, 2, 2, 2], 1, 0),  # symmetric but over half the kernel: torch's own padding refuses it
        ([1, 1, 1, 1], 0, 0),  # the plain case: torch's AvgPool2d
    ],
)
def test_average_pool_with_any_pads_matches_onnxruntime(pads, include, ceil, opset):
    model = _average_pool(pads, include, ceil, opset=opset)
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 7)).astype(np.float32)
    expected = session(model).run(None, {"x": x})[0]
    with torch.no_grad():
        got = TorchModel(model).module(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _pool_classifier():
    """conv -> AveragePool with asymmetric pads -> conv -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3, "w2"),
        numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["b"], name="r1"),
        helper.make_node("AveragePool", ["b"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], name="pool"),
        helper.make_node("Conv", ["p", "w2"], ["c"], pads=[1, 1, 1, 1], name="c2"),
        helper.make_node("Relu", ["c"], ["d"], name="r2"),
        helper.make_node("GlobalAveragePool", ["d"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc"),
    ]
    return _graph(nodes, inits, [1, 3, 8, 8], [1, 4])


def test_a_graph_with_asymmetric_average_pool_prunes(tmp_path):
    path = tmp_path / "pool.onnx"
    onnx.save(_pool_classifier(), path)
    data = tmp_path / "x.npz"
    np.savez(data, inputs=np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32))
    result = api.prune(path, data, uniform=0.3, epochs=1, finetune_epochs=1, batch_size=32, progress=False)
    assert result.report["params"]["after_dense"] < result.report["params"]["before"]


def _one_line(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_an_op_without_converter_is_one_line_naming_the_node(tmp_path, capsys):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("LpPool", ["a"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="odd_pool"),
    ]
    model = _graph(nodes, inits, [1, 3, 8, 8], [1, 4, 4, 4])
    with pytest.raises(InputError, match="LpPool 'odd_pool' cannot be converted to torch"):
        TorchModel(import_model(model))
    path, data = tmp_path / "m.onnx", tmp_path / "x.npz"
    onnx.save(model, path)
    np.savez(data, inputs=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    code = main(["prune", str(path), "--data", str(data), "--uniform", "0.3", "-o", str(tmp_path / "o.onnx"), "--no-progress"])
    assert code == 2 and "LpPool 'odd_pool'" in _one_line(capsys)
    assert not (tmp_path / "o.onnx").exists()


def test_a_converted_node_that_fails_to_run_is_one_line_naming_it():
    # A target that folds the batch into the channels: fine at batch 1, wrong for any other.
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.array([4, 64], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Reshape", ["a", "shape"], ["y"], name="fold_batch"),
    ]
    model = import_model(_graph(nodes, inits, [1, 3, 8, 8], [4, 64]))
    with pytest.raises(InputError, match="Reshape 'fold_batch' does not run in torch on a batch of 2"):
        TorchModel(model)


def test_negative_axes_convert_to_what_onnx_computes():
    """onnx2torch applies negative axes one by one (Unsqueeze [-2, -1] of [N, C] gave [N, 1, C, 1],
    ReduceMax [-2, -1] without keepdims reduced C): the import counts them from the front."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((6, 4, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([-2, -1], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("ReduceMax", ["a"], ["m"], axes=[-2, -1], keepdims=0, name="pool"),
        helper.make_node("Unsqueeze", ["m", "axes"], ["u"], name="back_to_4d"),
        helper.make_node("Conv", ["u", "w2"], ["y"], name="c2"),
    ]
    model = import_model(_graph(nodes, inits, [1, 3, 5, 5], [1, 6, 1, 1], opset=17))
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    expected = session(model).run(None, {"x": x})[0]
    with torch.no_grad():
        got = TorchModel(model).module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _matches_onnxruntime(model, x):
    expected = session(model).run(None, {"x": x})
    with torch.no_grad():
        got = TorchModel(model).module(torch.from_numpy(x))
    got = got if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_20_converts(approximate):
    model = import_model(_graph([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate, name="gelu")], [],
                                [1, 3, 4, 4], [1, 3, 4, 4], opset=20))
    _matches_onnxruntime(model, np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32))


def test_split_18_by_number_of_outputs_converts():
    node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3, name="split")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 7, 2, 2])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abc"])
    model = import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    _matches_onnxruntime(model, np.random.default_rng(0).standard_normal((1, 7, 2, 2)).astype(np.float32))


def test_resize_19_converts_and_refuses_what_it_cannot_compute():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
                            nearest_mode="floor", name="up")
    model = import_model(_graph([node], [scales], [1, 3, 4, 4], [1, 3, 8, 8], opset=19))
    _matches_onnxruntime(model, np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32))
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1, name="smooth")
    with pytest.raises(InputError, match="Resize 'smooth' cannot be converted.*antialias"):
        TorchModel(import_model(_graph([node], [scales], [1, 3, 4, 4], [1, 3, 8, 8], opset=19)))
