"""Post-training compression (acc.prune.posttrain): the refit, the BatchNorm re-estimation, the
allocation's global start, and `acc shrink --rate --data` end to end with its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from acc.cli import main
from acc.data.tensor_data import TensorData
from acc.passes.analysis import analyze
from acc.passes.counting import count
from acc.passes.importer import import_model
from acc.passes.mask import masked_model
from acc.passes.oneshot import ratio_plan
from acc.passes.verify import session
from acc.prune.bridge import TorchModel
from acc.prune.posttrain.calibration import batchnorms, recalibrate_bn
from acc.prune.posttrain.refit import capture, layers_to_refit, refit

ROOT = Path(__file__).resolve().parent.parent
RESNET20 = ROOT / "models" / "resnet20.onnx"
DEMO = ROOT / "models" / "data" / "cifar10_demo"


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run beside others on two cores: one torch thread each is several times faster
    there than two threads contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_images(n: int, shape, seed: int) -> TensorData:
    return TensorData(torch.randn(n, *shape[1:], generator=torch.Generator().manual_seed(seed)))


def pruned_pair(zoo_path, name: str, ratio: float = 0.5):
    model = import_model(zoo_path(name))
    analysis = analyze(model)
    plan = ratio_plan(analysis, ratio)
    return analysis, plan, TorchModel(masked_model(analysis, plan)), TorchModel(model)


@torch.no_grad()
def layer_error(layer, pruned, original, data) -> float:
    """||pruned layer(pruned input) - original layer output||^2 on the kept outputs, over `data`."""
    total = 0.0
    for x, _ in data.batches(64):
        got = layer.module(capture(pruned, layer.module, x, output=False))
        want = capture(original, layer.original, x, output=True)
        total += float((got - want)[:, layer.kept_out].double().pow(2).sum())
    return total


@torch.no_grad()
def output_error(pruned, original, data) -> float:
    return sum(float((pruned(x) - original(x)).double().pow(2).sum()) for x, _ in data.batches(64))


@pytest.mark.parametrize("name, kind", [("residual", "conv"), ("residual", "linear"), ("depthwise", "depthwise")])
def test_refit_reduces_the_layers_reconstruction_error(zoo_path, name, kind):
    analysis, plan, bridge, original = pruned_pair(zoo_path, name)
    shape = analysis.index.shape(analysis.index.input_names[0])
    estimate, validate = random_images(192, shape, 1), random_images(64, shape, 2)
    layers = [layer for layer in layers_to_refit(analysis, plan, bridge, original) if layer.skip is None]
    layer = next(layer for layer in layers if layer.kind == kind)
    fitted = TensorData(torch.cat([estimate.inputs, validate.inputs]))
    before = layer_error(layer, bridge.module, original.module, fitted)
    records = refit([layer], bridge.module, original.module, estimate, validate)
    after = layer_error(layer, bridge.module, original.module, fitted)
    assert records[0]["refitted"] and records[0]["validation_error_after"] < records[0]["validation_error_before"]
    # The ridge solution towards the pruned weights never fits its own rows worse than those weights.
    assert after < 0.95 * before
    # Only kept positions change: the removed input channels' weights stay zero.
    if kind != "depthwise":
        removed = torch.ones(layer.module.weight.shape[1], dtype=torch.bool)
        removed[layer.kept_in] = False
        assert float(layer.module.weight.detach()[:, removed].abs().sum()) == 0.0


def test_refit_in_graph_order_brings_outputs_closer_on_unseen_inputs(zoo_path):
    analysis, plan, bridge, original = pruned_pair(zoo_path, "residual")
    shape = analysis.index.shape(analysis.index.input_names[0])
    unseen = random_images(128, shape, 9)
    before = output_error(bridge.module, original.module, unseen)
    layers = layers_to_refit(analysis, plan, bridge, original)
    assert [layer.node for layer in layers] == [n.name for n in analysis.index.topological_nodes()
                                                if n.name in {layer.node for layer in layers}]
    refit(layers, bridge.module, original.module, random_images(384, shape, 1), random_images(128, shape, 2))
    assert output_error(bridge.module, original.module, unseen) < 0.8 * before


@pytest.mark.parametrize("name", ["residual", "depthwise", "channels_last_matmul", "flatten_classifier"])
def test_refit_from_one_pass_of_the_original_equals_the_per_layer_passes(zoo_path, name, monkeypatch):
    """The original's target rows taken for every layer in one forward pass per batch give the same
    weights as running the original up to each layer, whether all, some or none of the layers'
    rows fit the cache's budget."""
    from acc.prune.posttrain import refit as refit_module

    analysis, plan, _, original = pruned_pair(zoo_path, name)
    shape = analysis.index.shape(analysis.index.input_names[0])
    weights = {}
    for budget in (refit_module.TARGET_CACHE_BYTES, 40_000, 0):
        monkeypatch.setattr(refit_module, "TARGET_CACHE_BYTES", budget)
        bridge = TorchModel(masked_model(analysis, plan))
        layers = layers_to_refit(analysis, plan, bridge, original)
        records = refit(layers, bridge.module, original.module, random_images(96, shape, 1), random_images(32, shape, 2))
        assert any(r["refitted"] for r in records)
        weights[budget] = {k: v.clone() for k, v in bridge.module.state_dict().items()}
    full, *others = weights.values()
    for other in others:
        assert all(torch.equal(full[k], other[k]) for k in full)


@pytest.mark.parametrize("name", ["residual", "depthwise", "channels_last_matmul", "flatten_classifier"])
def test_refit_from_one_sweep_of_the_pruned_model_equals_the_per_layer_passes(zoo_path, name, monkeypatch):
    """The pruned model's inputs to the layers taken by one sweep (paused at each layer while it is
    refitted) give the weights and records of a stopped pass per layer, bit for bit, also when the
    sweep runs out of its activation budget part way and the rest goes layer by layer."""
    from acc.prune.posttrain import refit as refit_module
    from acc.prune.posttrain.sweep import LayerSweep

    analysis, plan, _, original = pruned_pair(zoo_path, name)
    shape = analysis.index.shape(analysis.index.input_names[0])
    real_sweep = refit_module.LayerSweep

    class Recorded:
        """The sweep the refit makes, with the live bytes it had reached at each layer it handed over."""

        def __init__(self, *args, budget):
            self.sweep, self.peaks = real_sweep(*args, budget=budget), []

        def __iter__(self):
            for item in self.sweep:
                self.peaks.append(self.sweep.peak)
                yield item

    results, sweeps = {}, {}
    budgets = {"per layer": None, "sweep": 2**40, "sweep out of budget": None}
    for how in budgets:
        made = sweeps.setdefault(how, [])

        def sweep(*args, budget=budgets[how], made=made):
            made.append(Recorded(*args, budget=budget))
            return made[-1]

        sweep.supports = (lambda *a: False) if how == "per layer" else real_sweep.supports
        monkeypatch.setattr(refit_module, "LayerSweep", sweep)
        bridge = TorchModel(masked_model(analysis, plan))
        layers = layers_to_refit(analysis, plan, bridge, original)
        records = refit(layers, bridge.module, original.module, random_images(96, shape, 1), random_images(32, shape, 2))
        assert any(r["refitted"] for r in records)
        results[how] = ({k: v.clone() for k, v in bridge.module.state_dict().items()}, records)
        if how == "sweep":  # out of budget: past what it held when it handed over the first layer
            budgets["sweep out of budget"] = made[0].peaks[0]
    todo = sum(1 for layer in layers if layer.skip is None)
    assert sweeps["per layer"] == []
    [full], [cut] = sweeps["sweep"], sweeps["sweep out of budget"]
    assert not full.sweep.exhausted and full.sweep.handed == todo
    if max(full.peaks) > full.peaks[0]:  # the live bytes grow after the first layer: the sweep stops part way
        assert cut.sweep.exhausted and 0 < cut.sweep.handed < todo, (full.peaks, cut.sweep.peak, cut.sweep.handed)
    (want, want_records), *others = results.values()
    for got, got_records in others:
        assert all(torch.equal(want[k], got[k]) for k in want)
        assert got_records == want_records
    assert LayerSweep.supports(TorchModel(original.model).module, [layers[0].module]) is False  # not its module


def test_bn_recalibration_matches_statistics_computed_directly(zoo_path):
    model = import_model(zoo_path("residual"))
    torch_model = TorchModel(model)
    data = random_images(96, analysis_shape(model), 3)
    first = batchnorms(torch_model.module)[0]
    with torch.no_grad():
        inputs = torch.cat([capture(torch_model.module, first, x, output=False) for x, _ in data.batches(96)])
    assert recalibrate_bn(torch_model.module, data, batch_size=32, augment=False) == len(batchnorms(torch_model.module))
    # Pooled over all 96 images although they came in three batches: not an average of per-batch variances.
    expected_mean = inputs.double().mean((0, 2, 3))
    expected_var = inputs.double().var((0, 2, 3), unbiased=True)
    assert torch.allclose(first.running_mean.double(), expected_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(first.running_var.double(), expected_var, rtol=1e-5, atol=1e-6)
    assert not torch_model.module.training and not first.training
    # Deeper BatchNorms: in one batch, their statistics are those of that batch in training mode.
    last = batchnorms(torch_model.module)[-1]
    recalibrate_bn(torch_model.module, data, batch_size=96, augment=False)
    for m in batchnorms(torch_model.module):
        m.train()
    with torch.no_grad():
        deep = capture(torch_model.module, last, data.inputs, output=False)
    torch_model.module.eval()
    assert torch.allclose(last.running_var.double(), deep.double().var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)


def analysis_shape(model):
    return analyze(model).index.shape(analyze(model).index.input_names[0])


def test_global_start_meets_the_target(zoo_path):
    from acc.prune.posttrain.allocate import global_rates
    from acc.prune.search import Guidance, SearchConfig, cost_model

    analysis = analyze(import_model(zoo_path("residual")))
    cost = cost_model(analysis, "params")
    guidance = Guidance(analysis, cost, SearchConfig())
    target = cost.total("params") / 2
    rates = global_rates(analysis, cost, guidance, target, "params")
    assert cost.measure(rates, "params") <= target
    assert np.all(rates <= guidance.caps(target, "params") + 1e-9)
    assert len(set(np.round(rates, 3))) > 1  # not uniform: the global order decides per group


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_shrink_rate_end_to_end_writes_a_verified_smaller_model_and_report(tmp_path, capsys, monkeypatch):
    from acc.prune.posttrain import shrink as posttrain_shrink

    # A one-step annealing keeps the test fast; the search's quality is the benchmark's question.
    short = posttrain_shrink.default_search()
    short.t_end, short.cooling = 60.0, 0.5
    monkeypatch.setattr(posttrain_shrink, "default_search", lambda: short)
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    code, text, _ = run_cli(["shrink", RESNET20, "-o", out, "--rate", "1.5x", "--data", DEMO,
                             "--calibration-images", "150", "--test-images", "300", "--report", report], capsys)
    assert code == 0 and "verified in onnxruntime" in text
    small = onnx.load(out)
    onnx.checker.check_model(small)
    data = json.loads(report.read_text())
    before, after = count(import_model(RESNET20)).params, count(import_model(out)).params
    assert before / after >= 1.45 and data["after"]["params"] == after
    post = data["post_training"]
    assert post["calibration_images"]["held_out"] >= 8 and post["labels_used"] is False
    assert any(layer["refitted"] for layer in post["recovery"]["layers"])
    held = post["held_out"]["pruned"]
    assert 0.0 < held["relative_l2"] < 1.0 and held["top1_agreement"] > 0.5 and "accuracy" in held
    assert post["test"]["images"] == 300 and post["test"]["accuracy_after"] > 0.5
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert session(small).run(None, {small.graph.input[0].name: x})[0].shape == (1, 10)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rate", "2x"], "--rate needs --data"),
        (["--rate", "2x", "--ratio", "0.3", "--data", "{demo}"], "--rate and --ratio"),
        (["--ratio", "0.3", "--data", "{demo}"], "--data is read only with --rate"),
        (["--rate", "2x", "--data", "{demo}", "--calibration-images", "20"], "give at least"),
        (["--rate", "0.5", "--data", "{demo}"], "--rate must be more than 1x"),
        (["--rate", "2x", "--data", "{small}"], "the model takes (3, 32, 32)"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, args, message):
    small = tmp_path / "data" / "small.npy"  # model-ready float inputs of another size
    small.parent.mkdir()
    np.save(small, np.zeros((200, 3, 16, 16), np.float32))
    args = [a.format(demo=DEMO, small=small) for a in args]
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, _, err = run_cli(["shrink", RESNET20, "-o", out, "--report", report, *args], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
