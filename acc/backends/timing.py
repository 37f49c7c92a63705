"""Run and time models on one engine (TVM or onnxruntime), interleaving models round by round.

`python -m acc.backends.timing REQUEST.json RESULT.json` runs one engine in a process of its own:
on 2 cores, onnxruntime timed in a process that has run TVM read 2.5-3x slower. The same runners
drive a remote TVM device from the calling process (the remote does the work there).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

# Exit code of the worker when TVM's outputs differ from the reference.
MISMATCH_EXIT = 3


@dataclass
class Latency:
    median_ms: float
    p10_ms: float
    p90_ms: float
    std_ms: float
    mean_ms: float
    rounds: int

    @classmethod
    def of(cls, times_ms: list[float]) -> "Latency":
        a = np.asarray(times_ms, dtype=np.float64)
        return cls(float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)),
                   float(a.std()), float(a.mean()), len(a))


class TvmRunner:
    def __init__(self, library: str, remote=None, upload_name: str | None = None):
        import tvm
        from tvm import relax

        self.tvm = tvm
        if remote is None:
            self.dev = tvm.cpu(0)
            mod = tvm.runtime.load_module(library)
        else:
            name = upload_name or os.path.basename(library)
            remote.upload(library, target=name)
            mod = remote.load_module(name)
            self.dev = remote.cpu(0)
        self.vm = relax.VirtualMachine(mod, self.dev)

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        self.vm.set_input("main", *[self.tvm.runtime.tensor(a, self.dev) for a in arrays])

    def outputs(self) -> list[np.ndarray]:
        self.vm.invoke_stateful("main")
        out = self.vm.get_outputs("main")
        outs = [out] if hasattr(out, "numpy") else list(out)
        return [o.numpy() for o in outs]

    def time_round(self, number: int, min_repeat_ms: float) -> float:
        f = self.vm.time_evaluator("invoke_stateful", self.dev, number=number, repeat=1, min_repeat_ms=int(min_repeat_ms))
        return f("main").mean * 1e3


class OrtRunner:
    def __init__(self, model: str):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]
        self.feed: dict = {}

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        self.feed = dict(zip(self.names, arrays))

    def outputs(self) -> list[np.ndarray]:
        return list(self.sess.run(None, self.feed))

    def time_round(self, number: int, min_repeat_ms: float) -> float:
        # Like TVM's time_evaluator: grow `number` until one round lasts min_repeat_ms.
        while True:
            start = time.perf_counter()
            for _ in range(number):
                self.sess.run(None, self.feed)
            elapsed = (time.perf_counter() - start) * 1e3
            if elapsed >= min_repeat_ms or number >= 1 << 20:
                return elapsed / number
            number = max(number * 2, math.ceil(number * min_repeat_ms / max(elapsed, 1e-3)))


def compare_outputs(got: list[np.ndarray], ref: list[np.ndarray], rtol: float = 1e-3, atol: float = 1e-4) -> tuple[bool, float]:
    """(close, max abs diff); atol scales with the reference's magnitude (logits can be large)."""
    if len(got) != len(ref):
        return False, math.inf
    worst, ok = 0.0, True
    for g, r in zip(got, ref):
        if g.shape != r.shape:
            return False, math.inf
        diff = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if g.size else 0.0
        worst = max(worst, diff)
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        ok &= bool(np.allclose(g, r, rtol=rtol, atol=atol * max(1.0, scale), equal_nan=True))
    return ok, worst


def run_interleaved(runners, inputs, rounds: int, number: int, min_repeat_ms: float) -> list[list[float]]:
    """Time each runner once per round, A, B, A, B ...; returns ms per run, per runner."""
    times: list[list[float]] = [[] for _ in runners]
    for runner, arrays in zip(runners, inputs):
        runner.set_inputs(arrays)
        runner.outputs()  # warm-up: first-run allocation and page faults stay out of the figures
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            times[i].append(runner.time_round(number, min_repeat_ms))
    return times


def main(argv: list[str]) -> int:
    request = json.loads(open(argv[0]).read())
    result: dict = {"outputs": [], "times_ms": [], "max_abs_diff": []}
    data = [np.load(path) for path in request["inputs"]]
    inputs = [[d[f"arr_{i}"] for i in range(len(d.files))] for d in data]
    if request["engine"] == "tvm":
        runners = [TvmRunner(m) for m in request["models"]]
    else:
        runners = [OrtRunner(m) for m in request["models"]]
    for i, (runner, arrays) in enumerate(zip(runners, inputs)):
        runner.set_inputs(arrays)
        outs = runner.outputs()
        out_path = f"{request['out_prefix']}{i}.npz"
        np.savez(out_path, *outs)
        result["outputs"].append(out_path)
        if request.get("references"):
            ref = np.load(request["references"][i])
            ok, diff = compare_outputs(outs, [ref[f"arr_{k}"] for k in range(len(ref.files))])
            result["max_abs_diff"].append(diff)
            if not ok:
                result["mismatch"] = i
                open(argv[1], "w").write(json.dumps(result))
                return MISMATCH_EXIT
    result["times_ms"] = run_interleaved(runners, inputs, request["rounds"], request["number"], request["min_repeat_ms"])
    result["latency"] = [asdict(Latency.of(t)) for t in result["times_ms"]] if request["rounds"] else []
    open(argv[1], "w").write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
