"""Where the search's candidates are scored: in this process, or on a pool of Ray actors.

The annealing (acc/prune/search.py) hands a batch of candidates to a scoring pool and reads back
their energies; it does not know where they ran. A pool has three methods:

- `energies([(rates, seed_offset), ...]) -> [float, ...]`, in the order given;
- `keep_counts(rates)`: the structure a rate vector stands for (the search's cache key);
- `describe() -> dict`: how candidates were scored, for the report.

`SerialScoring` wraps one OneShotScorer and scores the batch one candidate after another.
`RayScoring` starts actors (`num_cpus`/`num_gpus` each, as many as the cluster holds, at most one
per candidate of a batch); each builds its own OneShotScorer once from `ScorerInputs`, put in
Ray's object store once per round: the model's and the teacher's ONNX bytes and in-memory
validation, BatchNorm-calibration and fine-tune samples. Both paths build the scorer with the same
code from the same inputs, so a seed gives the same energies and the same chosen rates on Ray as
in this process (on CPU, with one torch thread on each side; float sums depend on thread counts).

Ray is an optional extra (`pip install 'acc[ray]'`): only `RayCluster` and `RayScoring` import it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch

from acc.errors import InputError
from acc.passes.analysis import analyze
from acc.prune.bridge import TorchModel
from acc.prune.cost import CostModel
from acc.prune.memory_format import channels_last_is_faster
from acc.prune.objective import Objective, output_kinds
from acc.prune.search import OneShotScorer, SearchConfig, keep_counts
from acc.prune.teacher import teacher_for

RAY_HINT = "pip install 'acc[ray]'"
LOCAL = "local"  # --ray without an address: start a Ray cluster on this machine
OBJECT_STORE_BYTES = 512 * 1024**2  # a local cluster's object store (larger objects spill to disk)
CONNECT_WAIT_S = 5.0


@dataclass
class ScorerInputs:
    """Everything a OneShotScorer is built from, in memory and picklable (shipped to Ray actors)."""

    model: bytes  # the round's model, normalised ONNX
    teacher: bytes | None  # the original model, when some output is distilled
    use_labels: bool
    val: Any  # in-memory data (TensorData): the validation subset the energy is measured on
    calibration: Any  # BatchNorm re-estimation sample
    train: Any | None  # fine-tune sample (finetune_steps x finetune_batch images), None without fine-tuning
    config: SearchConfig
    columns: dict[str, str] | None = None  # the cost model's column layers (metric "nonzero")
    budget: dict | None = None  # how the search was fitted to its share of the round (search.fit_budget)
    channels_last: bool = False  # candidates train in channels-last memory (decided once: candidate_layout)

    def build(self, device: str = "cpu") -> OneShotScorer:
        model = onnx.load_from_string(self.model)
        analysis = analyze(model)
        dev = torch.device(device)
        bridge = TorchModel(model).to(dev)
        teacher = None
        if self.teacher is not None:
            graph = onnx.load_from_string(self.teacher)
            teacher = teacher_for(graph, TorchModel(graph).module, dev)
        objective = Objective(teacher, use_labels=self.use_labels, kinds=output_kinds(model))
        return OneShotScorer(analysis, bridge, objective, self.val.to(dev),
                             self.calibration.to(dev), self.config,
                             train=None if self.train is None else self.train.to(dev),
                             cost=CostModel(analysis, self.columns, self.config.round_to),
                             channels_last=self.channels_last)


def candidate_layout(model: onnx.ModelProto, sample, device: str = "cpu") -> bool:
    """Whether the round's candidates train faster in channels-last memory, timed on the round's
    model with a batch of `sample` (acc.prune.memory_format). Decided here, once, and shipped with
    the ScorerInputs: a layout timed in each scorer's process could differ between two of them,
    and every candidate of a round must be scored alike (the layout moves float sums)."""
    if torch.device(device).type != "cpu" or sample is None or len(sample) == 0:
        return False
    x, _ = next(iter(sample.batches(min(len(sample), 64))))
    return channels_last_is_faster(TorchModel(model).module, x, device)


class SerialScoring:
    """Candidates scored one after another by one scorer in this process."""

    def __init__(self, scorer):
        self.scorer = scorer

    def energies(self, batch) -> list[float]:
        return [float(self.scorer.energy(np.asarray(rates), seed_offset=offset)) for rates, offset in batch]

    def keep_counts(self, rates) -> tuple:
        return self.scorer.keep_counts(rates)

    def describe(self) -> dict:
        return {"mode": "serial"}

    def close(self) -> None:
        pass


def open_scoring(inputs: ScorerInputs, cost: CostModel, device: str = "cpu", cluster: RayCluster | None = None):
    """The round's scoring pool: serial in this process, or Ray actors on `cluster`."""
    if cluster is None:
        return SerialScoring(inputs.build(device))
    return RayScoring(inputs, cost, cluster, inputs.config.candidates)


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


class RayCluster:
    """The Ray cluster the candidates run on: one started here (`address` "local", shut down by
    `close`) or an existing one (an address, "auto", "ray://host:port"; `close` disconnects).
    A connection the caller already holds (ray.init before acc) is used and left open."""

    def __init__(self, ray, address: str, candidate_cpus: float, candidate_gpus: float, connected: bool):
        self.ray, self.address = ray, address
        self.candidate_cpus, self.candidate_gpus = candidate_cpus, candidate_gpus
        self.connected = connected  # made here (closed by `close`), not the caller's
        self.capacity = worker_capacity(ray.nodes(), candidate_cpus, candidate_gpus)

    @classmethod
    def connect(cls, address: str = LOCAL, candidate_cpus: float = 1.0, candidate_gpus: float = 0.0,
                wait_s: float = CONNECT_WAIT_S) -> RayCluster:
        if not candidate_cpus > 0:
            raise InputError(f"--candidate-cpus must be more than 0, got {candidate_cpus:g}")
        if not candidate_gpus >= 0:
            raise InputError(f"--candidate-gpus must be 0 or more, got {candidate_gpus:g}")
        address = str(address or LOCAL)
        ray = import_ray()
        if address not in (LOCAL, "auto"):
            probe(address, wait_s)
        connected = not ray.is_initialized()
        if connected:
            quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
            try:
                if address == LOCAL:
                    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                             object_store_memory=OBJECT_STORE_BYTES, **quiet)  # a new one, even beside `ray start`
                else:
                    ray.init(address=address, **quiet)
            except Exception as err:  # noqa: BLE001 - Ray raises several kinds; the user needs one line
                line = (str(err).strip().splitlines() or [type(err).__name__])[0]
                hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                    " (a cluster with token authentication, Ray's default, needs RAY_AUTH_MODE=token here)")
                raise InputError(f"--ray {address}: could not connect to Ray: {line}{hint}") from None
        cluster = cls(ray, address, float(candidate_cpus), float(candidate_gpus), connected)
        if cluster.capacity < 1:
            cluster.close()
            raise InputError(f"--ray {address}: no node of the cluster has {candidate_cpus:g} CPUs"
                             f"{f' and {candidate_gpus:g} GPUs' if candidate_gpus else ''} for one candidate worker")
        return cluster

    def close(self) -> None:
        if self.connected and self.ray.is_initialized():
            self.ray.shutdown()  # stops the cluster when it was started here, disconnects otherwise
        self.connected = False


def worker_capacity(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many workers of `cpus` CPUs and `gpus` GPUs the live nodes hold (whole workers per node)."""
    total = 0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        have = node.get("Resources", {})
        fit = math.floor(have.get("CPU", 0.0) / cpus + 1e-9)
        if gpus > 0:
            fit = min(fit, math.floor(have.get("GPU", 0.0) / gpus + 1e-9))
        total += max(fit, 0)
    return total


# A client's HTTP/2 connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS and
# its client server are) answers with a SETTINGS frame of its own.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def probe(address: str, wait_s: float = CONNECT_WAIT_S) -> None:
    """Refuse an address where no gRPC server answers within `wait_s`: ray.init would retry for
    minutes against a dead port, or a port that something else listens on."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep:
        host, port = rest, "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=wait_s) as conn:
            conn.sendall(_HTTP2_HELLO)
            frame = conn.recv(9)
    except ValueError:
        raise InputError(f"--ray takes HOST:PORT (or ray://HOST:PORT, auto), got '{address}'") from None
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise InputError(f"--ray {address}: no Ray cluster answers there ({reason})") from None
    if len(frame) < 4 or frame[3] != 4:
        raise InputError(f"--ray {address}: something answers there, but not a Ray cluster (no gRPC)")


class ScoringWorker:
    """A Ray actor: builds its OneShotScorer once, then scores candidates one at a time."""

    def __init__(self, inputs: ScorerInputs, threads: int, device: str):
        torch.set_num_threads(threads)
        self.scorer = inputs.build(device)

    def ready(self) -> bool:
        return True

    def energy(self, rates, seed_offset: int) -> float:
        return float(self.scorer.energy(np.asarray(rates), seed_offset=seed_offset))


class RayScoring:
    """Candidates scored in parallel by Ray actors; `close` ends them."""

    def __init__(self, inputs: ScorerInputs, cost: CostModel, cluster: RayCluster, candidates: int):
        ray = cluster.ray
        from ray.util import ActorPool

        self.ray, self.cluster, self.cost, self.candidates = ray, cluster, cost, candidates
        shipped = ray.put(inputs)
        threads = max(1, int(cluster.candidate_cpus))
        device = "cuda" if cluster.candidate_gpus > 0 else "cpu"
        worker = ray.remote(ScoringWorker).options(num_cpus=cluster.candidate_cpus, num_gpus=cluster.candidate_gpus)
        self.workers = max(1, min(candidates, cluster.capacity))
        self.actors = [worker.remote(shipped, threads, device) for _ in range(self.workers)]
        try:
            ray.get([a.ready.remote() for a in self.actors])  # a worker that cannot build its scorer fails here
        except BaseException:
            self.close()
            raise
        self.pool = ActorPool(self.actors)

    def energies(self, batch) -> list[float]:
        return [float(e) for e in self.pool.map(lambda actor, item: actor.energy.remote(*item), list(batch))]

    def keep_counts(self, rates) -> tuple:
        return keep_counts(self.cost, rates)

    def describe(self) -> dict:
        c = self.cluster
        return {"mode": "ray", "address": c.address, "workers": self.workers, "candidate_cpus": c.candidate_cpus,
                "candidate_gpus": c.candidate_gpus, "candidates_per_step": self.candidates}

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
