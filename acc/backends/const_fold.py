"""Relax calls on constants folded with numpy before TVM's own FoldConstant sees them.

TVM's FoldConstant builds every constant call as a TIR function with LLVM and runs it: the
BatchNorm folding leaves eight of them per conv (add eps, sqrt, divide, reshape, multiply, ...)
and the NHWC conversion one more per weight, each 20-40 ms to compile. ResNet-20 spent 9 of its
12 s of build preparation there, and every build acc makes pays it (a latency table's layers, the
latency goal's timings, tuning, `acc build`). The elementwise arithmetic and the shape moves
below have the same float32 semantics in numpy (IEEE operations, numpy broadcasting is Relax's);
anything else, or any result whose dtype or shape differs from what Relax inferred, is left for
FoldConstant.
"""

from __future__ import annotations

import numpy as np

_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
           "relax.divide": np.divide, "relax.maximum": np.maximum, "relax.minimum": np.minimum}
_UNARY = {"relax.sqrt": np.sqrt, "relax.negative": np.negative, "relax.exp": np.exp,
          "relax.rsqrt": lambda x: (np.ones((), x.dtype) / np.sqrt(x)).astype(x.dtype)}
_SHAPE = ("relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze")


def _value(arg):
    """The numpy value of a constant argument (tensor or scalar immediate), else None."""
    import tvm

    if isinstance(arg, tvm.ir.GenericConst):
        return arg.value.numpy()
    if isinstance(arg, (tvm.tirx.FloatImm, tvm.tirx.IntImm)):
        return np.array(arg.value, dtype=str(arg.ty.dtype))
    return None


def _axes(attr) -> list[int] | None:
    return None if attr is None else [int(a) for a in attr]


def _evaluate(call) -> np.ndarray | None:
    from tvm import relax

    name = call.op.name if hasattr(call.op, "name") else ""
    if name in _BINARY and len(call.args) == 2:
        a, b = (_value(x) for x in call.args)
        if a is None or b is None or a.dtype != b.dtype and b.ndim and a.ndim:
            return None
        if not b.ndim:
            b = b.astype(a.dtype)
        elif not a.ndim:
            a = a.astype(b.dtype)
        with np.errstate(all="ignore"):
            return _BINARY[name](a, b)
    if name in _UNARY and len(call.args) == 1:
        x = _value(call.args[0])
        if x is None or x.dtype.kind != "f":
            return None
        with np.errstate(all="ignore"):
            return _UNARY[name](x)
    if name in _SHAPE:
        x = _value(call.args[0])
        if x is None:
            return None
        if name == "relax.reshape":
            shape = call.args[1]
            if not isinstance(shape, relax.ShapeExpr):
                return None
            return x.reshape([int(d) for d in shape.values])
        if name == "relax.permute_dims":
            return np.transpose(x, _axes(call.attrs.axes))
        if name == "relax.expand_dims":
            out = x
            for axis in sorted(int(a) if int(a) >= 0 else int(a) + x.ndim + len(call.attrs.axis) for a in call.attrs.axis):
                out = np.expand_dims(out, axis)
            return out
        axes = _axes(call.attrs.axis)
        return np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)
    return None


def _matches(call, value: np.ndarray) -> bool:
    """The numpy result has the dtype and static shape Relax inferred for the call."""
    from tvm import relax

    ty = call.ty
    shape = getattr(ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr) or str(ty.dtype) != str(value.dtype):
        return False
    try:
        return [int(d) for d in shape.values] == list(value.shape)
    except TypeError:  # a symbolic dimension
        return False


def fold_constants(mod):
    """`mod` with every supported call on constants replaced by its value (module docstring)."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Fold(relax.PyExprMutator):
        def __init__(self):
            super().__init__()
            self.known = {}  # var -> its folded constant

        def visit_var_(self, var):
            return self.known.get(var, var)

        def visit_dataflow_var_(self, var):
            return self.known.get(var, var)

        def visit_call_(self, call):
            call = super().visit_call_(call)
            value = _evaluate(call)
            if value is None or not _matches(call, value):
                return call
            return relax.const(np.ascontiguousarray(value), str(value.dtype))

        def visit_var_binding_(self, binding):
            value = self.visit_expr(binding.value)
            if isinstance(value, tvm.ir.GenericConst):
                self.known[binding.var] = value
            self.builder_.emit_normalized(relax.VarBinding(binding.var, value))

    functions = {gvar: Fold().visit_expr(func) if isinstance(func, relax.Function) else func
                 for gvar, func in mod.functions_items()}
    return relax.transform.DeadCodeElimination()(tvm.IRModule(functions, attrs=mod.attrs))
