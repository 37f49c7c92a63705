"""Time single layers and whole models on the engine a model is built for: the figures behind
`--metric latency` (acc.prune.latency_cost says what to time and predicts from them).

Engines: TVM for a target (on the host, or on a device through an RPC session: the layer shapes
are compiled into one library, uploaded once, and each timed with the VM's time evaluator), and
onnxruntime on the host. Layer times are cached per engine, target and device under the user
cache folder (`~/.cache/acc/latency/`), keyed by the layer's op, shapes and attributes: a layer
shape timed for one model, round or run is not timed again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from acc.atomic import write_text
from acc.backends.rpc import _one_line
from acc.errors import ToolchainError

LAYERS_PER_LIBRARY = 64  # layer shapes compiled into one library (one upload to a device)
MODEL_ROUNDS = 15  # interleaved rounds whole models are timed over (their ratio fits the latency model)


def default_cache_root() -> Path:
    from acc.backends.tune import default_db_root

    return default_db_root().parent / "latency"  # beside the tuning database: ~/.cache/acc/latency


class LatencyCache:
    """{layer key: ms} in one JSON file per engine/target/device; concurrent runs merge their entries."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, float] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except ValueError:
                self.entries = {}  # a damaged cache is re-measured, not trusted

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def update(self, new: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.with_suffix(".lock")):
            current = {}
            if self.path.is_file():
                try:
                    current = json.loads(self.path.read_text())
                except ValueError:
                    current = {}
            current.update(new)
            write_text(self.path, json.dumps(current, sort_keys=True))
        self.entries.update(new)


@contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _random_inputs(shapes, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) * 0.1 for s in shapes]


def _model_inputs(model: onnx.ModelProto) -> list[tuple[str, list[int]]]:
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
        out.append((vi.name, dims))
    return out


class LayerTimer:
    """Shared by the engines: the cache, and the rounds each figure is the median of."""

    engine = ""

    def __init__(self, cache_dir: str | os.PathLike | None = None, rounds: int = 5, min_repeat_ms: float = 20.0,
                 log=print):
        self.cache_root = Path(cache_dir) if cache_dir else default_cache_root()
        self.rounds = rounds
        self.min_repeat_ms = min_repeat_ms
        self.log = log
        self.cache = LatencyCache(self.cache_root / f"{self.context()}.json")

    def context(self) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"engine": self.engine, "cache": str(self.cache.path), "rounds": self.rounds}

    def time_layers(self, layers) -> list[float]:
        missing = [layer for layer in layers if self.cache.get(layer.key()) is None]
        if missing:
            started = time.monotonic()
            measured = self._time_missing(missing)
            self.cache.update({layer.key(): float(ms) for layer, ms in zip(missing, measured)})
            self.log(f"latency table: timed {len(missing)} layer shapes on {self.engine} in "
                     f"{time.monotonic() - started:.0f} s ({len(layers) - len(missing)} cached)")
        return [self.cache.get(layer.key()) for layer in layers]

    def _time_missing(self, layers) -> list[float]:
        raise NotImplementedError


class OrtTimer(LayerTimer):
    """onnxruntime on this machine (CPU execution provider)."""

    engine = "onnxruntime"

    def context(self) -> str:
        import onnxruntime as ort
        import platform

        return f"onnxruntime-{ort.__version__}-{platform.machine()}-{_cpu_name()}"

    def _session(self, model: onnx.ModelProto):
        import onnxruntime as ort

        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def _round(self, sess, feed) -> float:
        """ms per run, over one round of at least min_repeat_ms."""
        number = 1
        while True:
            start = time.perf_counter()
            for _ in range(number):
                sess.run(None, feed)
            elapsed = (time.perf_counter() - start) * 1e3
            if elapsed >= self.min_repeat_ms or number >= 1 << 16:
                return elapsed / number
            number *= 2

    def _time_session(self, sess, feed) -> float:
        sess.run(None, feed)
        return float(np.median([self._round(sess, feed) for _ in range(self.rounds)]))

    def _time_missing(self, layers) -> list[float]:
        out = []
        for layer in layers:
            sess = self._session(layer.onnx_model())
            names = [i.name for i in sess.get_inputs()]
            out.append(self._time_session(sess, dict(zip(names, _random_inputs(layer.input_shapes())))))
        return out

    def time_models(self, models: list) -> list[float]:
        """Whole models, timed interleaved (A, B, A, B ...) over MODEL_ROUNDS rounds: medians."""
        runs = []
        for model in models:
            shapes = _model_inputs(model)
            sess = self._session(model)
            feed = dict(zip([n for n, _ in shapes], _random_inputs([s for _, s in shapes])))
            sess.run(None, feed)
            runs.append((sess, feed))
        times = [[self._round(sess, feed) for sess, feed in runs] for _ in range(MODEL_ROUNDS)]
        return [float(x) for x in np.median(np.asarray(times), axis=0)]


class TvmTimer(LayerTimer):
    """TVM for `spec`, on the host or on the device behind `session` (an RPC session)."""

    engine = "tvm"

    def __init__(self, spec, session=None, device: str = "host", cc: str | None = None, tune_root=None,
                 tracker: str | None = None, key: str | None = None, **kwargs):
        """`tune_root`: a MetaSchedule database root; layers are then timed with the schedules it
        holds for the same ops at other widths (acc.backends.tune_transfer), measured here, or on
        the device behind `tracker`/`key`."""
        self.spec, self.session, self.device, self.cc = spec, session, device, cc
        self.tune_root, self.tracker, self.key = tune_root, tracker, key
        self.database = None
        self.seeded = 0  # layers and models given a transferred schedule
        super().__init__(**kwargs)

    def context(self) -> str:
        from acc.backends.tune import db_dir

        import tvm

        name = db_dir(self.cache_root, self.spec).name
        device = hashlib.sha256(self.device.encode()).hexdigest()[:8]
        # TVM's version and acc's kernels' are in the name: other kernels, other times
        from acc.backends.cpu_schedule import VERSION

        return (f"tvm-{name}-{device}-{tvm.__version__}-k{VERSION}"
                + ("-tuned" if self.tune_root is not None else ""))

    def describe(self) -> dict:
        return {**super().describe(), "target": self.spec.name, "device": self.device,
                "tuned": self.tune_root is not None}

    def _load(self, mod):
        """Compile `mod`, and load it here or on the device (the library file is gone once loaded)."""
        import tvm
        from tvm import relax

        from acc.backends.compile import compile_module, export

        executable = compile_module(mod, self.spec, self.database)
        with tempfile.TemporaryDirectory(prefix="acc-latency-") as folder:
            path = Path(folder) / "layers.so"
            export(executable, path, self.cc)
            if self.session is None:
                dev = tvm.cpu(0)
                return relax.VirtualMachine(tvm.runtime.load_module(str(path)), dev), dev
            name = f"acc_latency_{os.getpid()}_{time.monotonic_ns() % 10**9}.so"
            self.session.upload(str(path), target=name)
            dev = self.session.cpu(0)
            return relax.VirtualMachine(self.session.load_module(name), dev), dev

    def _seed(self, mod) -> None:
        """Give the layers the database's schedules of the same ops at tuned widths (no search)."""
        from acc.backends.tune import tune

        remote_without_tracker = self.session is not None and not self.tracker
        if remote_without_tracker:  # MetaSchedule measures on a device through a tracker only
            return
        report = tune(mod, self.spec, 0, db_root=self.tune_root, cc=self.cc, tracker=self.tracker, key=self.key,
                      log=lambda *a, **k: None)
        self.database = report.database
        self.seeded += report.transferred

    def _time(self, vm, dev, fname: str, arrays) -> float:
        import tvm

        args = [tvm.runtime.tensor(a, dev) for a in arrays]
        vm[fname](*args)  # warm-up
        evaluator = vm.time_evaluator(fname, dev, number=1, repeat=self.rounds,
                                      min_repeat_ms=int(self.min_repeat_ms if self.session is None else 0))
        return float(np.median(np.asarray(evaluator(*args).results)) * 1e3)

    def _time_missing(self, layers) -> list[float]:
        import tvm

        from acc.backends.compile import import_onnx, prepare, TensorInfo

        out: list[float] = []
        for start in range(0, len(layers), LAYERS_PER_LIBRARY):
            chunk = layers[start:start + LAYERS_PER_LIBRARY]
            combined = tvm.IRModule()
            for i, layer in enumerate(chunk):
                model = layer.onnx_model()
                infos = [TensorInfo(vi.name, list(s), "float32") for vi, s in zip(model.graph.input, layer.input_shapes())]
                with warnings.catch_warnings():  # the layer's output carries no shape: the importer says so
                    warnings.simplefilter("ignore")
                    mod = prepare(import_onnx(model, infos))
                combined[f"layer{i}"] = mod["main"].with_attr("global_symbol", f"layer{i}")
            try:
                if self.tune_root is not None:
                    self._seed(combined)
                vm, dev = self._load(combined)
                out += [self._time(vm, dev, f"layer{i}", _random_inputs(layer.input_shapes()))
                        for i, layer in enumerate(chunk)]
            except Exception as err:  # noqa: BLE001 - TVM/RPC raise TVMError with multi-line text
                raise ToolchainError(f"timing layers on {self.device} failed: {_one_line(err)}") from None
        return out

    def time_models(self, models: list) -> list[float]:
        """Whole models, timed interleaved over MODEL_ROUNDS rounds: medians."""
        import tvm

        from acc.backends.compile import graph_inputs, import_onnx, prepare

        try:
            runs = []
            for model in models:
                infos = graph_inputs(model, {})
                mod = prepare(import_onnx(model, infos))
                if self.tune_root is not None:
                    self._seed(mod)
                vm, dev = self._load(mod)
                args = [tvm.runtime.tensor(a, dev) for a in _random_inputs([i.shape for i in infos])]
                vm["main"](*args)
                runs.append((vm.time_evaluator("main", dev, number=1, repeat=1, min_repeat_ms=int(
                    self.min_repeat_ms if self.session is None else 0)), args))
            rounds = MODEL_ROUNDS if self.session is None else self.rounds
            times = [[f(*args).mean * 1e3 for f, args in runs] for _ in range(rounds)]
        except Exception as err:  # noqa: BLE001
            raise ToolchainError(f"timing the model on {self.device} failed: {_one_line(err)}") from None
        return [float(x) for x in np.median(np.asarray(times), axis=0)]


def _cpu_name() -> str:
    try:
        from tvm.target import codegen

        return str(codegen.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 - TVM missing or without LLVM: the machine name is enough
        import platform

        return platform.processor() or "cpu"
