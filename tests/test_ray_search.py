"""The search's candidates in batches, scored in this process or in parallel on Ray (acc/prune/scoring.py):
the same seed and batch size give the same energies and chosen rates wherever they ran."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from acc import api
from acc.autocompress import scorer_inputs
from acc.cli import main
from acc.passes.analysis import analyze
from acc.passes.importer import import_model
from acc.prune.pipeline import PruneOptions
from acc.prune.rates import Rates
from acc.errors import InputError
from acc.prune.scoring import RayCluster, RayScoring, SerialScoring, probe, worker_capacity
from acc.prune.search import Annealer, Guidance, SearchConfig, cost_model

from test_prune import tiny  # noqa: F401 - the tiny CNN fixture

DEMO = Path(__file__).resolve().parent.parent / "models" / "data" / "cifar10_demo"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (starting one takes seconds); acc uses this connection."""
    import ray

    saved = os.environ.get("RAY_memory_monitor_refresh_ms")
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"  # no task killed for memory pressure in a small container
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False,
             logging_level="ERROR")
    try:
        yield RayCluster.connect("local")
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_memory_monitor_refresh_ms", None)
        else:
            os.environ["RAY_memory_monitor_refresh_ms"] = saved


@pytest.fixture(scope="module")
def tiny_search(tiny):  # noqa: F811
    """The tiny CNN's scorer inputs for a short search with 2 candidates per step."""
    model = import_model(tiny)
    analysis = analyze(model)
    cost = cost_model(analysis, "params")
    config = SearchConfig(eval_images=64, finetune_steps=8, finetune_batch=32, bn_batches=1, cooling=0.5,
                          candidates=2, seed=9)
    inputs = scorer_inputs(model, analysis, tiny, DEMO, PruneOptions(rates=Rates(), limit=300, progress=False),
                           config, None, cost)
    return analysis, cost, config, inputs


def _run(analysis, cost, config, scoring, checkpoint=None):
    annealer = Annealer(Guidance(analysis, cost, config), scoring, cost.total("params") / 2, "params", config,
                        checkpoint=checkpoint)
    return annealer.run().tolist(), annealer.state


def test_candidates_on_ray_score_as_in_this_process(cluster, tiny_search):
    analysis, cost, config, inputs = tiny_search
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: float sums then add up in the same order
    try:
        serial = _run(analysis, cost, config, SerialScoring(inputs.build()))
    finally:
        torch.set_num_threads(threads)
    scoring = RayScoring(inputs, cost, cluster, config.candidates)
    try:
        remote = _run(analysis, cost, config, scoring)
    finally:
        scoring.close()
    assert scoring.describe() == {"mode": "ray", "address": "local", "workers": 2, "candidate_cpus": 1.0,
                                  "candidate_gpus": 0.0, "candidates_per_step": 2}
    assert remote[0] == serial[0]
    assert [t["candidate_energy"] for t in remote[1].trace] == [t["candidate_energy"] for t in serial[1].trace]
    assert remote[1].confirmation == serial[1].confirmation and serial[1].confirmation  # re-scored as one batch too
    steps = [t for t in serial[1].trace if t["step"] > 0]
    assert len(steps) == 2 * serial[1].step and all(sum(t["chosen"] for t in steps if t["step"] == s) == 1
                                                    for s in range(1, serial[1].step + 1))


class Rule:
    """Energies from a rule on the structure (no model): cheap and deterministic."""

    def __init__(self, cost):
        self.cost, self.calls = cost, []

    def keep_counts(self, rates):
        return tuple(int(k) for k in self.cost.kept_counts(rates))

    def energy(self, rates, seed_offset=0):
        self.calls.append(seed_offset)
        k = np.array(self.keep_counts(rates), dtype=float)
        return float(37 * np.sin(k).sum() + (k ** 2).sum() % 97 + 3 * seed_offset)


def test_one_candidate_per_step_is_the_plain_annealing(tiny_search):
    """K=1 draws, scores and accepts exactly as the one-candidate loop: propose, score, accept."""
    analysis, cost, config, _ = tiny_search
    config = SearchConfig(cooling=0.7, seed=11, starts=("uniform",))  # the loop below starts from uniform rates
    _, state = _run(analysis, cost, config, Rule(cost))
    replay = Annealer(Guidance(analysis, cost, config), Rule(cost), cost.total("params") / 2, "params", config)
    current = replay.guidance.uniform(replay.target, "params")
    energy = replay.score(current)
    expected = [energy]
    while replay.state.temperature > config.t_end:
        candidate = replay.propose(current)
        e = replay.score(candidate)
        if replay.accept(e - energy):
            current, energy = candidate, e
        expected.append(e)
        replay.state.temperature *= config.cooling
    assert [t["candidate_energy"] for t in state.trace] == expected
    assert all("candidate" not in t for t in state.trace)
    assert state.current == current.tolist()


def test_a_batched_search_resumes_from_its_checkpoint(tiny_search, tmp_path):
    analysis, cost, _, _ = tiny_search
    config = SearchConfig(cooling=0.7, seed=3, candidates=3)
    whole = _run(analysis, cost, config, Rule(cost))

    class Killed(Exception):
        pass

    def kill_at_step_3(step, **_):
        if step == 3:
            raise Killed

    checkpoint = tmp_path / "search.json"
    annealer = Annealer(Guidance(analysis, cost, config), Rule(cost), cost.total("params") / 2, "params", config,
                        checkpoint=checkpoint, progress=kill_at_step_3)
    with pytest.raises(Killed):
        annealer.run()
    scorer = Rule(cost)
    resumed = Annealer(Guidance(analysis, cost, config), scorer, cost.total("params") / 2, "params", config,
                       checkpoint=checkpoint)
    assert resumed.resume() and resumed.state.step == 2
    assert resumed.run().tolist() == whole[0]
    assert resumed.state.trace == whole[1].trace
    assert scorer.calls.count(0) <= 3 * (whole[1].step - 2)  # the checkpoint's cache is not scored again


def test_compile_with_ray_reports_how_candidates_were_scored(cluster, tiny, tmp_path):  # noqa: F811
    import ray

    out = tmp_path / "out"
    result = api.compile(tiny, "2x", DEMO, out, ray=True, rounds=1, budget_epochs=1, search_steps=2, eval_images=64,
                         search_finetune_steps=4, limit=160, test_limit=100, progress=False)
    search = result.report["search"][0]
    assert search["scoring"]["mode"] == "ray" and search["scoring"]["workers"] == 2
    assert search["config"]["candidates"] == 2  # the default with --ray: the workers the cluster holds
    assert sum(1 for t in search["trace"] if t["step"] == 1) == 2 and search["seconds"] > 0
    assert "scored on Ray (local): 2 workers of 1 CPU, 2 candidates per step" in (out / "report.md").read_text()
    assert ray.is_initialized()  # a connection the caller made is left open


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_ray_address_is_one_line_and_writes_nothing(tiny, tmp_path, capsys):  # noqa: F811
    address = f"127.0.0.1:{_unused_port()}"
    code = main(["compile", str(tiny), "--rate", "2x", "--data", str(DEMO), "-o", str(tmp_path / "o"),
                 "--ray", address, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--ray {address}: no Ray cluster answers there" in err
    assert not (tmp_path / "o").exists()


def test_workers_fit_whole_on_each_live_node():
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 3.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    assert worker_capacity(nodes, 2, 0) == 4 + 1
    assert worker_capacity(nodes, 1, 0.25) == 4  # four share the one GPU; the CPU-only node holds none
    assert worker_capacity(nodes, 0.5, 0) == 22


def test_the_probe_tells_ray_from_other_listeners(cluster):
    """A port where something else listens would keep ray.init retrying for minutes."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import ray

    probe(ray.get_runtime_context().gcs_address)  # Ray's GCS speaks gRPC
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(InputError, match="something answers there, but not a Ray cluster"):
            probe(f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_ray_not_installed_says_how_to_install_it(tiny, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["compile", str(tiny), "--rate", "2x", "--data", str(DEMO), "-o", str(tmp_path / "o"), "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'acc[ray]'" in err
    assert not (tmp_path / "o").exists()


def test_candidate_sizes_need_ray(tiny, tmp_path, capsys):  # noqa: F811
    code = main(["compile", str(tiny), "--rate", "2x", "--data", str(DEMO), "-o", str(tmp_path / "o"),
                 "--candidate-gpus", "0.25"])
    assert code == 2 and "give them with --ray" in capsys.readouterr().err


def test_the_serial_path_never_imports_ray():
    code = ("import sys, acc.cli, acc.api, acc.autocompress, acc.prune.scoring; acc.cli.build_parser(); "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == []
