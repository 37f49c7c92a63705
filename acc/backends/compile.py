"""ONNX -> TVM Relax -> one shared library for a target, plus the metadata JSON to load it.

The JSON beside the library (`model.so.json`) tells `acc bench` and users the input names,
shapes and dtypes (in the order the VM takes them), the outputs, the target and the versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from acc import __version__
from acc.atomic import atomic_path, check_output_path, write_text
from acc.backends import targets as targets_mod
from acc.backends import toolchain
from acc.backends.const_fold import fold_constants
from acc.errors import InputError


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str


@dataclass
class BuildResult:
    library: Path
    metadata: Path
    target: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    tuning: dict = field(default_factory=dict)
    seconds: float = 0.0


def metadata_path(library: str | os.PathLike) -> Path:
    return Path(f"{library}.json")


def read_metadata(library: str | os.PathLike) -> dict:
    path = metadata_path(library)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{library} has no metadata file {path} (build it with `acc build`)") from None
    except ValueError as err:
        raise InputError(f"unreadable metadata {path}: {err}") from None


def parse_input_shapes(items: list[str] | None) -> dict[str, list[int]]:
    """`name=1x3x32x32` (repeatable) -> {name: [1, 3, 32, 32]}."""
    shapes: dict[str, list[int]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        try:
            shape = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            shape = []
        if not sep or not name or not shape or min(shape) < 1:
            raise InputError(f"--input-shape must be NAME=DxDxD (positive ints), got {item!r}")
        shapes[name] = shape
    return shapes


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    from acc.passes.load import load_model

    return load_model(path)


def graph_inputs(model: onnx.ModelProto, overrides: dict[str, list[int]]) -> list[TensorInfo]:
    """The real inputs (not initializers), with concrete shapes: overrides, else 1 for free dims."""
    inits = {i.name for i in model.graph.initializer}
    infos = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        if vi.name in overrides:
            shape = overrides[vi.name]
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                raise InputError(f"--input-shape {vi.name}={'x'.join(map(str, shape))} does not fit the model's "
                                 f"shape {['?' if d is None else d for d in dims]}")
        else:
            # A free (symbolic) dim is almost always the batch: compile for one sample.
            shape = [1 if d is None else d for d in dims]
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)))
        infos.append(TensorInfo(vi.name, shape, dtype))
    unknown = set(overrides) - {i.name for i in infos}
    if unknown:
        raise InputError(f"--input-shape names no input of the model: {', '.join(sorted(unknown))} "
                         f"(inputs: {', '.join(i.name for i in infos)})")
    return infos


def clips_as_relax_ops(mod):
    """`mod` with the frontend's TIR max/min against a constant bound as Relax maximum/minimum.

    TVM's ONNX frontend lowers Clip straight to TIR, which layout conversion cannot see through:
    in NHWC every ReLU6 of a MobileNet became transpose, clip, transpose, in a kernel of its own.
    As Relax operators (the bound given the input's rank, which layout conversion needs) they
    convert, and fuse into the conv's epilogue."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    ops = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}

    def rewrite(call):
        if call.op != call_tir or not isinstance(call.args[0], tvm.ir.GlobalVar):
            return call
        op = ops.get(call.args[0].name_hint.rstrip("0123456789"))  # maximum, maximum1, ...
        args = list(call.args[1].fields) if isinstance(call.args[1], tvm.ir.Tuple) else []
        if op is None or len(args) != 2 or not isinstance(args[1], tvm.ir.GenericConst):
            return call
        x, bound = args[0], args[1].value.numpy()
        shape = getattr(x.ty, "shape", None)
        if bound.size != 1 or not isinstance(shape, relax.ShapeExpr) or str(call.ty.shape) != str(shape):
            return call
        if call.ty.dtype != str(bound.dtype):
            return call
        return op(x, relax.const(bound.reshape([1] * len(shape.values)), str(bound.dtype)))

    return relax.transform.DeadCodeElimination()(rewrite_calls(mod, rewrite))


def rewrite_calls(mod, rewrite):
    """A new module: every call in `mod`'s Relax functions (main, or a latency table's
    layer0..N) passed through `rewrite(call) -> expr`, its arguments rewritten first."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            return rewrite(super().visit_call_(call))

    functions = {gvar: Rewrite().visit_expr(func) if isinstance(func, relax.Function) else func
                 for gvar, func in mod.functions_items()}
    return tvm.IRModule(functions, attrs=mod.attrs)


def import_onnx(model: onnx.ModelProto, inputs: list[TensorInfo]):
    """The Relax IRModule of `model` (weights bound as constants)."""
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(model, shape_dict={i.name: i.shape for i in inputs},
                         dtype_dict={i.name: i.dtype for i in inputs})
    except Exception as err:  # noqa: BLE001 - the frontend raises many kinds for unsupported graphs
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        raise InputError(f"TVM cannot import the model: {lines[-1] if lines else type(err).__name__}") from None


def prepare(mod):
    """Inference rewrites before lowering: BN folded into the conv before it (else decomposed into
    elementwise ops that fuse into the conv's epilogue): one task per conv instead of two. Then
    convolutions in NHWC with HWIO weights (folded at build time): output channels are contiguous,
    which is what the CPU kernels vectorise (`cpu_schedule`); the graph's own layout is restored
    where a layout-sensitive op (Flatten, the outputs) needs it. Constant arithmetic is folded in
    numpy first (acc.backends.const_fold): TVM's FoldConstant compiles every constant call."""
    import tvm
    from tvm import relax

    numpy_fold = tvm.transform.module_pass(lambda m, _ctx: fold_constants(m), opt_level=0, name="NumpyFoldConstant")
    seq = [relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(),
           relax.transform.CanonicalizeBindings(), numpy_fold, relax.transform.FoldConstant(),
           tvm.transform.module_pass(lambda m, _ctx: clips_as_relax_ops(m), opt_level=0, name="ClipsAsRelaxOps"),
           # conv2d_transpose stays NCHW: TVM legalises it in no other layout.
           relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"],
                                          "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}),
           numpy_fold, relax.transform.FoldConstant()]
    return tvm.transform.Sequential(seq)(mod)


def relax_outputs(mod, names: list[str]) -> list[TensorInfo]:
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    outs = []
    for i, f in enumerate(fields):
        shape = [int(d) for d in f.shape.values] if getattr(f, "shape", None) is not None else []
        outs.append(TensorInfo(names[i] if i < len(names) else f"output{i}", shape, str(f.dtype)))
    return outs


def compile_module(mod, spec: targets_mod.TargetSpec, database=None):
    """A Relax executable: tuned schedules from `database` where it has them, acc's CPU default
    schedules (`cpu_schedule`) for every other function."""
    import tvm
    from tvm import relax

    target = spec.tvm_target()
    mod = schedule_module(mod, target, database)
    from tvm.relax import pipeline

    try:
        lower = pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)
    except (ValueError, AttributeError):  # TVM 0.27's dispatcher names CPU functions it lacks
        from tvm.relax.backend.cpu_generic import pipeline as cpu

        lower = cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
    lower = tvm.transform.Sequential(lower)
    with tvm.transform.PassContext(opt_level=3):
        return relax.build(mod, target=target, relax_pipeline=lower)


def schedule_module(mod, target, database=None):
    """`mod` fused and every kernel scheduled (tuned records first, then acc's CPU defaults), its
    weight layout rewrites already applied to the constants: what the build lowers."""
    import tvm
    from tvm import relax

    mod = fuse(mod, target)
    if database is not None:
        with target, database, tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    if target.kind.name == "llvm":
        from acc.backends.cpu_schedule import default_schedule_pass

        with target:
            mod = default_schedule_pass(target)(mod)
    # Weight layout rewrites (packed conv weights) become functions of their own, run on the
    # constant weights here, at build time.
    with target:
        return tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                         relax.transform.FoldConstant()])(mod)


def fuse(mod, target):
    """`mod` legalised and fused into one TIR function per kernel: the tasks tuning sees and the
    build's input (one function for both, so database keys match)."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = pipeline.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    seq = [*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
           relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    if target.kind.name == "llvm":
        from acc.backends.cpu_schedule import pad_conv_channels

        mod = pad_conv_channels(mod, target)
    with target:
        return tvm.transform.Sequential(seq)(mod)


def export(executable, out: Path, cc: str | None) -> None:
    from tvm.support import cc as tvm_cc

    fcompile = toolchain.fcompile(cc) or tvm_cc.create_shared
    with atomic_path(out) as tmp:
        executable.export_library(str(tmp), fcompile=fcompile)


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(
    model_path: str | os.PathLike,
    target: str | None = "host",
    out: str | os.PathLike | None = None,
    *,
    target_json: str | None = None,
    cc: str | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    tune_trials: int = 0,
    tune_db: str | os.PathLike | None = None,
    tracker: str | None = None,
    key: str | None = None,
    log=print,
) -> BuildResult:
    """Compile `model_path` for `target` into the shared library `out` (+ `out`.json)."""
    start = time.monotonic()
    spec = targets_mod.resolve(target, target_json)
    spec.tvm_target()
    linker = toolchain.resolve_cc(spec, cc)
    out = check_output_path(out or Path(model_path).with_suffix(".so"))
    if tune_trials < 0:
        raise InputError("--tune-trials must be >= 0")
    if (tracker or key) and not tune_trials:
        raise InputError("--tracker/--key are for tuning on a device: give --tune-trials too")

    model = load_onnx(model_path)
    inputs = graph_inputs(model, input_shapes or {})
    mod = prepare(import_onnx(model, inputs))
    outputs = relax_outputs(mod, [o.name for o in model.graph.output])

    database, tuning = None, {}
    if tune_trials or tune_db:
        from acc.backends import tune

        report = tune.tune(mod, spec, trials_per_task=tune_trials, db_root=tune_db, cc=linker,
                           tracker=tracker, key=key, log=log)
        database, tuning = report.database, report.summary()
    executable = compile_module(mod, spec, database)
    export(executable, out, linker)

    meta = {
        "acc_version": __version__,
        "tvm_version": _tvm_version(),
        "model": str(Path(model_path).resolve()),
        "model_sha256": _sha256(model_path),
        "target_name": spec.name,
        "target": spec.tvm_target().export(),
        "cc": linker,
        "inputs": [asdict(i) for i in inputs],
        "outputs": [asdict(o) for o in outputs],
        "tuning": tuning,
    }
    meta_file = metadata_path(out)
    write_text(meta_file, json.dumps(_jsonable(meta), indent=2) + "\n")
    return BuildResult(out, meta_file, spec.name, inputs, outputs, tuning, time.monotonic() - start)


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def _jsonable(obj):
    """TVM's target export holds tvm_ffi containers; make them plain JSON."""
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or (hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes))):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, int, float)) or obj is None:
        return obj
    return str(obj)
