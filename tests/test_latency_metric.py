"""`--metric latency`: per-layer tables timed on the engine (cached), the cost model's prediction,
the search meeting a latency goal, report.json's measured `latency` section, and bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from acc.backends import layer_latency, rpc, targets
from acc.cli import main
from acc.passes.analysis import analyze
from acc.passes.counting import count
from acc.passes.importer import import_model
from acc.prune.latency_cost import build_latency_model, plan_layers
from acc.prune.latency_goal import meet_goal, settle_starts
from acc.prune.search import Annealer, Guidance, SearchConfig, cost_model, max_reduction

from test_prune import DEMO, tiny  # noqa: F401 - the tiny CNN fixture (widths 16, 32, 32)
from test_search import DEMO as DEMO_DIR

FAST_COMPILE = ["--rounds", "1", "--budget-epochs", "1", "--search-steps", "2", "--eval-images", "64", "--limit", "160",
                "--test-limit", "100", "--search-finetune-steps", "0", "--no-progress"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # layer times of a test stay in the test


@pytest.fixture(scope="module")
def analysis(tiny):  # noqa: F811
    return analyze(import_model(tiny))


def _macs(model: onnx.ModelProto) -> float:
    return float(count(onnx.shape_inference.infer_shapes(model)).flops)


def test_layer_shapes_are_the_widths_the_search_chooses_and_run(analysis):
    plans, layers = plan_layers(analysis, round_to=8)
    widths = {g.width for g in analysis.prunable_groups}
    assert len(plans) == 4 and len({x.key() for x in layers}) == len(layers)  # 3 convs and the Gemm, deduplicated
    for plan, grids, cells in plans:
        for form, grid in zip(plan.forms, grids):
            if form.n in widths:  # a conv's channels: multiples of 8 up to the width
                assert grid == list(range(8, form.n + 1, 8)), grid
        assert len(cells) == int(np.prod([len(g) for g in grids]))
    for layer in layers[:3]:  # a layer alone is a valid model onnxruntime runs
        model = layer.onnx_model()
        # The model's weights stay constants (engines pre-pack them once); only activations are fed.
        assert layer.constants[0] is False and all(layer.constants[1:])
        assert len(model.graph.input) == 1 and len(model.graph.initializer) == len(layer.shapes) - 1
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = {i.name: np.zeros(s, np.float32) for i, s in zip(sess.get_inputs(), layer.input_shapes(), strict=True)}
        assert sess.run(None, feed)[0].size > 0


def test_the_latency_model_recovers_a_synthetic_engine(analysis):
    # An engine where a layer costs 1 ns per MAC alone and a model 0.5 ns per MAC plus 0.2 ms: the
    # fit must find a = 0.5, b = 0.2, and (MACs being bilinear in the widths) predict exactly.
    lm = build_latency_model(analysis, lambda layers: [_macs(x.onnx_model()) * 1e-6 for x in layers],
                             lambda models: [0.5e-6 * _macs(m) + 0.2 for m in models], log=lambda m: None)
    assert lm.scale == pytest.approx(0.5, rel=1e-6) and lm.fixed_ms == pytest.approx(0.2, rel=1e-6)
    cost = cost_model(analysis, "latency", 1, lm)
    assert cost.total("latency") == pytest.approx(0.5e-6 * cost.flops_total + 0.2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        rates = rng.uniform(0, 0.9, cost.size)
        assert cost.measure(rates, "latency") == pytest.approx(0.5e-6 * cost.flops(rates) + 0.2, rel=1e-9)
    # the search's rescaling meets a latency goal, and the most it can reach accounts for the fixed cost
    goal = cost.total("latency") / 1.3
    guidance = Guidance(analysis, cost, SearchConfig())
    for rates in [rng.uniform(0.1, 0.9, cost.size) for _ in range(3)]:
        assert cost.measure(guidance.rescale(rates, goal, "latency"), "latency") <= goal
    reach = max_reduction(analysis, "latency", SearchConfig(), lm)
    assert reach < cost.total("latency") / 0.2


def test_the_chosen_widths_are_timed_and_moved_onto_the_goal(analysis):
    # The synthetic engine of the test above, whose whole models run 12 % slower than the table
    # predicts: the search's choice meets the goal by prediction and misses it measured, so it
    # must be cut further, keeping its shape, until the measured time meets the goal.
    lm = build_latency_model(analysis, lambda layers: [_macs(x.onnx_model()) * 1e-6 for x in layers],
                             lambda models: [0.5e-6 * _macs(m) + 0.2 for m in models], log=lambda m: None)
    cost = cost_model(analysis, "latency", 1, lm)
    guidance = Guidance(analysis, cost, SearchConfig())
    goal = cost.total("latency") / 1.4
    chosen = guidance.rescale(np.linspace(0.2, 0.6, cost.size), goal, "latency")
    timed = []

    full = cost.total("latency")

    def slower_engine(models):  # the whole model as the table measured it, any cut 12 % slower
        timed.append(len(models))
        return [ms if abs(ms - full) < 1e-9 else 1.12 * ms for ms in (0.5e-6 * _macs(m) + 0.2 for m in models)]

    rates, record = meet_goal(analysis, cost, guidance, chosen, goal, slower_engine, log=lambda m: None)
    tried = record["tried"]
    assert tried[0]["measured_ms"] == pytest.approx(1.12 * tried[0]["predicted_ms"], rel=1e-6)
    assert tried[0]["measured_ms"] > goal * 1.03
    assert len(tried) >= 2 and timed == [2] * len(tried)  # each beside the model at full width
    measured = tried[record["chosen"]]["measured_ms"]
    assert goal * 0.9 < measured <= goal * (1 + record["tolerance"])
    assert cost.measure(rates, "latency") < cost.measure(chosen, "latency")
    # the shape is kept: the groups cut hardest by the search are still cut hardest
    assert np.argsort(cost.kept_counts(rates) / cost.widths)[0] == np.argsort(cost.kept_counts(chosen) / cost.widths)[0]
    # an engine that agrees with the table: the choice is timed once and kept
    exact, record = meet_goal(analysis, cost, guidance, chosen, goal, lambda models: [0.5e-6 * _macs(m) + 0.2 for m in models],
                              log=lambda m: None)
    assert len(record["tried"]) == 1 and np.array_equal(exact, chosen)


def _synthetic_cost(analysis):
    lm = build_latency_model(analysis, lambda layers: [_macs(x.onnx_model()) * 1e-6 for x in layers],
                             lambda models: [0.5e-6 * _macs(m) + 0.2 for m in models], log=lambda m: None)
    return cost_model(analysis, "latency", 1, lm)


def test_starts_are_timed_and_settled_onto_the_goal_before_they_are_scored(analysis):
    # An engine that agrees with the table on uniform cuts (what its line is fitted on) and runs an
    # uneven cut 12 % slower: the uneven start is cut further until it would measure the goal, the
    # uniform one stays, and all are timed in one run beside the model at full width.
    cost = _synthetic_cost(analysis)
    guidance = Guidance(analysis, cost, SearchConfig())
    goal = cost.total("latency") / 1.4
    starts = {"uniform": guidance.uniform(goal, "latency"),
              "uneven": guidance.rescale(np.linspace(0.1, 0.7, cost.size), goal, "latency", ordered=False),
              "unreachable": None}
    even = {cost.total("latency"), cost.measure(starts["uniform"], "latency")}
    calls = []

    def engine(models):
        calls.append(len(models))
        exact = [0.5e-6 * _macs(m) + 0.2 for m in models]
        return [ms if any(abs(ms - e) < 1e-9 for e in even) else 1.12 * ms for ms in exact]

    settled, targets, record = settle_starts(analysis, cost, guidance, starts, goal, engine, log=lambda m: None)
    assert calls == [3] and settled["unreachable"] is None and set(targets) == {"uniform", "uneven"}
    assert list(cost.kept_counts(settled["uniform"])) == list(cost.kept_counts(starts["uniform"]))
    assert targets["uniform"] <= goal
    uneven = record["starts"]["uneven"]
    assert uneven["measured_ms"] == pytest.approx(1.12 * uneven["predicted_ms"], rel=1e-6)
    assert targets["uneven"] == pytest.approx(cost.measure(settled["uneven"], "latency"))
    assert goal * 0.9 < 1.12 * targets["uneven"] <= goal * (1 + 1e-9)  # what the engine would measure
    # the annealing rescales its moves onto the target of the start that won
    energies = {"uniform": 2.0, "l1": 1.0}

    class ByStart:
        def keep_counts(self, rates):
            return tuple(int(k) for k in cost.kept_counts(rates))

        def energy(self, rates, seed_offset=0):
            for name, start in annealer.state.settled["starts"].items():
                if tuple(start["settled_kept"]) == self.keep_counts(rates):
                    return energies[name]
            return 3.0

    config = SearchConfig(t_start=10, t_end=5, cooling=0.5, starts=("uniform", "l1"), seed=1)
    guided = Guidance(analysis, cost, config)
    annealer = Annealer(guided, ByStart(), goal, "latency", config,
                        settle=lambda s: settle_starts(analysis, cost, guided, s, goal, engine, log=lambda m: None))
    annealer.run()
    won = annealer.state.settled["starts"]["l1"]
    assert annealer.state.start_kind == "l1" and annealer.state.target == pytest.approx(won["target_ms"])
    if won["measured_ms"] > goal * 1.03:  # an uneven start, moved: its moves aim below the goal
        assert won["target_ms"] < goal
    move = annealer.propose(np.array(annealer.state.current))
    assert cost.measure(move, "latency") <= won["target_ms"] * (1 + 1e-9)


def test_a_resumed_round_keeps_the_widths_it_timed(analysis, tmp_path):
    from acc.autocompress import CompileOptions, _meet_latency_goal

    lm = build_latency_model(analysis, lambda layers: [_macs(x.onnx_model()) * 1e-6 for x in layers],
                             lambda models: [0.5e-6 * _macs(m) + 0.2 for m in models], log=lambda m: None)
    cost = cost_model(analysis, "latency", 1, lm)
    goal = cost.total("latency") / 1.4
    chosen = Guidance(analysis, cost, SearchConfig()).rescale(np.full(cost.size, 0.3), goal, "latency")
    first, trace = _meet_latency_goal(analysis, cost, (chosen, {"trace": []}), goal, CompileOptions(rate=1.4), tmp_path,
                                      lambda models: [1.2 * (0.5e-6 * _macs(m) + 0.2) for m in models], lambda m: None)
    assert trace["trace"] == [] and len(trace["latency_goal"]["tried"]) >= 1

    def must_not_time(models):
        raise AssertionError("a resumed round times nothing again")

    again, record = _meet_latency_goal(analysis, cost, (chosen, {}), goal, CompileOptions(rate=1.4, resume=True), tmp_path,
                                       must_not_time, lambda m: None)
    assert np.array_equal(again, first) and record["latency_goal"] == trace["latency_goal"]


def test_onnxruntime_layer_times_are_cached_and_reused(analysis, tmp_path):
    _, layers = plan_layers(analysis, round_to=8)
    lines: list[str] = []
    first = layer_latency.OrtTimer(cache_dir=tmp_path, rounds=2, min_repeat_ms=2, log=lines.append)
    times = first.time_layers(layers[:6])
    assert all(t > 0 for t in times) and len(lines) == 1 and "timed 6 layer shapes" in lines[0]
    assert len(json.loads(first.cache.path.read_text())) == 6
    again = layer_latency.OrtTimer(cache_dir=tmp_path, log=lines.append)
    assert again.time_layers(layers[:6]) == times and len(lines) == 1  # nothing timed again


def test_tvm_layer_table_on_the_host_predicts_the_model(analysis, tmp_path):
    timer = layer_latency.TvmTimer(targets.resolve("host"), cache_dir=tmp_path, rounds=3, min_repeat_ms=5,
                                   log=lambda m: None)
    lm = build_latency_model(analysis, timer.time_layers, timer.time_models, round_to=8, how=timer.describe(),
                             log=lambda m: None)
    full = np.ones(len(analysis.prunable_groups))
    assert lm.measured_ms > 0 and lm.how["engine"] == "tvm" and lm.how["target"] == "host"
    assert len(lm.nodes) == 4 and all(np.all(np.asarray(n.table) > 0) for n in lm.nodes)
    assert lm.predict(full * 0.25) < lm.predict(full)
    assert 0.5 < lm.predict(full) / lm.measured_ms < 2.0


def test_compile_reaches_a_latency_goal_on_the_host(tiny, tmp_path, capsys):  # noqa: F811
    # Untuned TVM on the host: compute dominates even a tiny CNN (on onnxruntime it is per-op
    # overhead, and a busy machine can leave nothing measurable to gain).
    out = tmp_path / "c"
    code = main(["compile", str(tiny), "--rate", "1.5x", "--metric", "latency", "--target", "host",
                 "--data", str(DEMO_DIR), "-o", str(out), *FAST_COMPILE])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    lat = report["latency"]
    assert lat["engine"] == "tvm" and lat["target"] == "host" and lat["before_ms"] > 0 and lat["after_ms"] > 0
    assert lat["onnxruntime"]["before_ms"] > 0  # the host runs onnxruntime too: both are timed
    assert lat["goal_ms"] == pytest.approx(lat["table_ms"] / 1.5)
    # The chosen widths were built and timed whole before training, and moved onto the goal.
    goal = report["search"][0]["latency_goal"]
    chosen = goal["tried"][goal["chosen"]]
    assert goal["goal_ms"] == pytest.approx(lat["goal_ms"]) and all(t["measured_ms"] > 0 for t in goal["tried"])
    assert lat["predicted_ms"] == pytest.approx(chosen["predicted_ms"])
    # ... and the starts before they were scored, in one run beside the original
    settled = report["search"][0]["start"]["settled"]
    assert settled["starts"] and all(v["measured_ms"] > 0 for v in settled["starts"].values())
    assert len(settled["timed_ms"]) == 1 + len({tuple(v["kept"]) for v in settled["starts"].values()})
    assert "starts timed whole before scoring" in (out / "report.md").read_text()
    assert chosen["measured_ms"] <= goal["goal_ms"] * (1 + goal["tolerance"]) or \
        chosen["measured_ms"] == min(t["measured_ms"] for t in goal["tried"])
    assert lat["table"]["round_to"] == 8 and lat["table"]["layers"] == 4 and lat["table"]["engine"] == "tvm"
    for w in report["widths"]:  # the table's widths: multiples of 8 (or whole)
        assert w["after"] is None or w["after"] == w["before"] or w["after"] % 8 == 0, w
    assert "latency ms (tvm host)" in printed and "latency goal" in printed
    assert (out / "model.so").is_file()  # a TVM target: the library is built


def test_prune_reports_latency_on_onnxruntime(tiny, tmp_path):  # noqa: F811
    report = tmp_path / "r.json"
    code = main(["prune", str(tiny), "--data", str(DEMO), "-o", str(tmp_path / "p.onnx"), "--uniform", "0.5",
                 "--epochs", "0", "--finetune-epochs", "1", "--limit", "64", "--no-progress", "--target", "onnxruntime",
                 "--report", str(report)])
    assert code == 0
    lat = json.loads(report.read_text())["latency"]
    assert lat["engine"] == "onnxruntime" and lat["before_ms"] > 0 and lat["after_ms"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--metric", "latency"], "--metric latency needs --target"),
    (["--target", "onnxruntime", "--rpc", "127.0.0.1:9"], "--target onnxruntime runs on this machine"),
    (["--metric", "latency", "--target", "arm64"], "measured on the device: give --rpc"),
    (["--target", "host", "--key", "k"], "--key names a device behind a --tracker"),
    (["--metric", "latency", "--target", "host", "--tracker", "127.0.0.1:1", "--key", "k"], "cannot reach RPC tracker"),
])
def test_bad_latency_options_are_one_line_errors(tiny, tmp_path, capsys, extra, message):  # noqa: F811
    out = tmp_path / "o"
    code = main(["compile", str(tiny), "--rate", "2x", "--data", str(DEMO_DIR), "-o", str(out), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_missing_cross_compiler_names_its_package(tiny, tmp_path, capsys, monkeypatch):  # noqa: F811
    from acc.backends import toolchain

    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None)
    out = tmp_path / "o"
    code = main(["compile", str(tiny), "--rate", "2x", "--data", str(DEMO_DIR), "-o", str(out), "--metric", "latency",
                 "--target", "arm64", "--rpc", "127.0.0.1:9", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "apt-get install g++-aarch64-linux-gnu" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_a_busy_device_is_a_one_line_error_after_a_bounded_wait(tiny, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ACC_RPC_WAIT", "3")
    with rpc.start_tracker() as tracker, rpc.start_server(tracker=("127.0.0.1", tracker.port), key="busy"):
        held = rpc.connect(tracker=tracker.address, key="busy")  # someone else's session holds the only device
        out = tmp_path / "o"
        code = main(["compile", str(tiny), "--rate", "2x", "--data", str(DEMO_DIR), "-o", str(out), "--metric",
                     "latency", "--target", "host", "--tracker", tracker.address, "--key", "busy", "--no-progress"])
        del held
    err = capsys.readouterr().err
    assert code == 2 and "no free device with key 'busy'" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_the_experience_rule_follows_the_layers_milliseconds(analysis):
    # A synthetic engine where only the classifier costs anything: the group it reads holds the time.
    lm = build_latency_model(analysis, lambda layers: [1.0 if x.op_type == "Gemm" else 1e-6 for x in layers],
                             lambda models: [1.0 for _ in models], log=lambda m: None)
    held = lm.group_holdings(len(analysis.prunable_groups))
    full = np.ones(len(analysis.prunable_groups))
    assert held.sum() == pytest.approx(sum(n.predict(full) for n in lm.nodes if n.forms))
    cost = cost_model(analysis, "latency", 1, lm)
    order = Guidance(analysis, cost, SearchConfig(order_by="latency")).group_order
    assert held[order[-1]] == held.max() and held[order[0]] == held.min()
    with pytest.raises(ValueError):
        Guidance(analysis, cost_model(analysis, "flops"), SearchConfig(order_by="latency"))


def test_a_slower_result_is_warned_about(tmp_path):
    """The report's check: a result slower than its original on the engine gets a warning that says
    how to fix it (here the 'result' is the same CNN four times as wide: surely slower)."""
    from acc.backends import latency_device

    from backend_models import TinyCNN, export

    small = export(TinyCNN(width=8), tmp_path / "small.onnx", shape=(1, 3, 32, 32))
    wide = export(TinyCNN(width=64), tmp_path / "wide.onnx", shape=(1, 3, 32, 32))
    lines: list[str] = []
    slower = latency_device.measure(small, wide, None, repeat=5, log=lines.append)
    assert slower["engine"] == "onnxruntime" and slower["speedup"] < 0.97
    assert "slower than the original on onnxruntime" in slower["warning"] and "--round-to 8" in slower["warning"]
    assert lines == [f"warning: {slower['warning']}"]
    faster = latency_device.measure(wide, small, None, repeat=5, log=lines.append)
    assert faster["speedup"] > 1.03 and "warning" not in faster and len(lines) == 1
