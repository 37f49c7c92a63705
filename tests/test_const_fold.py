"""acc.backends.const_fold: constant arithmetic folded in numpy computes what TVM's FoldConstant does."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from acc.backends import compile as compile_mod  # noqa: E402
from acc.backends.const_fold import fold_constants  # noqa: E402
from tests.backend_models import TinyCNN, export  # noqa: E402

FRONT = [relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(),
         relax.transform.CanonicalizeBindings()]


def _constant_calls(mod) -> list[str]:
    """Ops of the calls in main whose every argument is a constant (what a folder has left)."""
    found = []

    @relax.expr_functor.visitor
    class Find(relax.PyExprVisitor):
        def visit_call_(self, call):
            if isinstance(call.op, tvm.ir.Op) and call.args and all(
                    isinstance(a, (tvm.ir.GenericConst, relax.ShapeExpr, tvm.tirx.FloatImm, tvm.tirx.IntImm))
                    for a in call.args):
                found.append(call.op.name)
            super().visit_call_(call)

    Find().visit_expr(mod["main"])
    return found


def _run(mod, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = onnx.load(export(TinyCNN(), tmp_path_factory.mktemp("fold") / "tiny.onnx"))
    return model, compile_mod.graph_inputs(model, {})


def test_batchnorm_arithmetic_folds_to_the_values_tvm_computes(tiny):
    model, infos = tiny
    front = tvm.transform.Sequential(FRONT)(compile_mod.import_onnx(model, infos))
    assert "R.sqrt(" in front.script(show_meta=False)  # the BatchNorm left its arithmetic on constants
    folded = fold_constants(front)
    assert _constant_calls(folded) == [] and "R.sqrt(" not in folded.script(show_meta=False)
    by_tvm = relax.transform.FoldConstant()(front)
    x = np.random.default_rng(0).standard_normal(infos[0].shape).astype("float32")
    np.testing.assert_array_equal(_run(folded, x), _run(by_tvm, x))


def test_prepare_leaves_tvm_nothing_to_compile_and_computes_the_same(tiny, monkeypatch):
    model, infos = tiny
    x = np.random.default_rng(1).standard_normal(infos[0].shape).astype("float32")
    ours = compile_mod.prepare(compile_mod.import_onnx(model, infos))
    monkeypatch.setattr(compile_mod, "fold_constants", lambda mod: mod)
    theirs = compile_mod.prepare(compile_mod.import_onnx(model, infos))
    np.testing.assert_array_equal(_run(ours, x), _run(theirs, x))


def test_calls_it_cannot_match_are_left_for_tvm():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 3], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            weight = relax.const(np.arange(6, dtype="float32").reshape(2, 3))
            relu = bb.emit(relax.op.nn.relu(weight))  # not in the folder's table
            power = bb.emit(relax.op.power(weight, weight))  # nor is this
            out = bb.emit_output(relax.op.add(x, relax.op.add(relu, power)))
        bb.emit_func_output(out)
    folded = fold_constants(bb.get())
    assert sorted(_constant_calls(folded)) == ["relax.nn.relu", "relax.power"]
