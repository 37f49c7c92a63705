"""Prove two graphs compute the same thing: onnxruntime, the same seeded inputs, a tight tolerance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from acc.errors import VerificationError

# max |a - b| <= RELATIVE_TOLERANCE * max |a| (+ a tiny floor for all-zero outputs).
RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_FLOOR = 1e-6

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
}


@dataclass
class OutputDiff:
    name: str
    max_abs_error: float
    max_abs_output: float

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= RELATIVE_TOLERANCE * self.max_abs_output + ABSOLUTE_FLOOR


def session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_inputs(model: onnx.ModelProto, seed: int = 0, samples: int = 2,
                  like: onnx.ModelProto | None = None) -> list[dict[str, np.ndarray]]:
    """Seeded inputs of `model`'s declared shapes; a free dim takes `like`'s size for it (the model
    a free-dim original is compared with was imported at one shape), else 1."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    fixed = {}
    for inp in like.graph.input if like is not None else []:
        fixed[inp.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
    feeds = []
    for _ in range(samples):
        feed = {}
        for inp in model.graph.input:
            if inp.name in inits:
                continue
            tt = inp.type.tensor_type
            other = fixed.get(inp.name, [])
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                     else (other[i] if i < len(other) and other[i] > 0 else 1) for i, d in enumerate(tt.shape.dim)]
            dtype = _NP_TYPES.get(tt.elem_type, np.float32)
            if np.issubdtype(dtype, np.floating):
                feed[inp.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feed[inp.name] = np.ones(shape, dtype=dtype)
        feeds.append(feed)
    return feeds


def _first_line(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _run_checked(what: str, call, outputs: list[str]):
    """onnxruntime's own failure (a graph it cannot load or run) as one VerificationError line."""
    try:
        return call()
    except VerificationError:
        raise
    except Exception as err:  # onnxruntime raises its own exception types, with multi-line texts
        named = ", ".join(f"'{n}'" for n in outputs) or "its outputs"
        raise VerificationError(f"{what} cannot be run by onnxruntime to compare {named}: {_first_line(err)}") from None


def compare(reference: onnx.ModelProto, candidate: onnx.ModelProto, seed: int = 0, samples: int = 2,
            what: str = "candidate model") -> list[OutputDiff]:
    names = [o.name for o in reference.graph.output]
    ref = _run_checked("the reference model", lambda: session(reference), names)
    cand = _run_checked(what, lambda: session(candidate), names)
    names = [o.name for o in ref.get_outputs()]
    diffs = {n: OutputDiff(n, 0.0, 0.0) for n in names}
    for feed in random_inputs(reference, seed, samples, like=candidate):
        a = _run_checked("the reference model", lambda: ref.run(names, feed), names)
        b = _run_checked(what, lambda: cand.run(names, feed), names)
        for n, x, y in zip(names, a, b):
            if x.shape != y.shape:
                raise VerificationError(f"{what}: output '{n}' changed shape: {x.shape} -> {y.shape}")
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            d = diffs[n]
            d.max_abs_error = max(d.max_abs_error, float(np.max(np.abs(x64 - y64), initial=0.0)))
            d.max_abs_output = max(d.max_abs_output, float(np.max(np.abs(x64), initial=0.0)))
    return list(diffs.values())


def verify_equal(reference: onnx.ModelProto, candidate: onnx.ModelProto, what: str = "rewritten model", seed: int = 0) -> list[OutputDiff]:
    """Raise VerificationError naming the first output that differs beyond the tolerance."""
    diffs = compare(reference, candidate, seed, what=what)
    for d in diffs:
        if not np.isfinite(d.max_abs_error) or not d.ok:
            raise VerificationError(
                f"{what} differs from its reference at output '{d.name}': max abs error "
                f"{d.max_abs_error:.3g} vs max abs output {d.max_abs_output:.3g} (tolerance {RELATIVE_TOLERANCE:g} relative)"
            )
    return diffs
