"""acc's default CPU schedules: every zoo graph and awkward conv still matches onnxruntime, every
conv gets the register-blocked kernel, and tuning keeps the default as a measured record."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import graph_zoo
from acc.backends import compile as compile_mod
from acc.backends import cpu_schedule, targets
from acc.backends.timing import TvmRunner
from backend_models import OneConv, export

AVX512 = cpu_schedule.VectorUnit(lanes=16, registers=32)
AVX2 = cpu_schedule.VectorUnit(lanes=8, registers=16)
NEON = cpu_schedule.VectorUnit(lanes=4, registers=32)


def _fits(tile, unit, limit):
    registers = tile.vectors * -(-tile.vector // unit.lanes)
    return tile.accumulators <= limit and tile.accumulators + registers + 1 <= unit.registers


def test_whole_register_counts_get_the_tile_with_most_fmas_per_load():
    T = cpu_schedule.ConvTile
    # 48 channels (3 vectors) at 32x32: 3 vectors x a 2x4 patch, 24 accumulators, 11 loads per 24 FMAs.
    assert cpu_schedule.conv_tile(48, 32, AVX512, 32, 432) == T(16, 3, 2, 4)
    assert cpu_schedule.conv_tile(64, 56, AVX512, 56, 576) == T(16, 4, 2, 2)
    # 128 channels of a 3x3 from 128: four vectors' packed weights (295 KB) leave the L2 share.
    assert cpu_schedule.conv_tile(128, 16, AVX512, 16, 1152) == T(16, 2, 2, 4)
    # 256 from 256, 512 at 7x7: one vector would be load-bound, so two may take more of L2.
    assert cpu_schedule.conv_tile(256, 8, AVX512, 8, 2304) == T(16, 2, 2, 4)
    assert cpu_schedule.conv_tile(512, 7, AVX512, 7, 4608) == T(16, 2, 1, 7)
    # 11 vectors (176 channels): no divisor but one; 16 pixels.
    assert cpu_schedule.conv_tile(176, 8, AVX512, 8, 1584).accumulators == 16
    # A 512-channel layer on a 4x4 or 2x2 map: one vector over the whole map, each weight read once.
    assert cpu_schedule.conv_tile(512, 4, AVX512, 4, 4608) == T(16, 1, 4, 4)
    assert cpu_schedule.conv_tile(352, 4, AVX512, 4, 3168) == T(16, 1, 4, 4)
    assert cpu_schedule.conv_tile(512, 2, AVX512, 2, 4608) == T(16, 1, 2, 2)
    assert cpu_schedule.conv_tile(64, 28, AVX512, 28, 576).pixels in (1, 2, 4, 7)  # divisors of the row only
    # Depthwise: a 2x2 patch times up to 5 vectors that divide the channels (25 vectors: 5).
    assert cpu_schedule.conv_tile(64, 56, AVX512, 56, 9, depthwise=True) == T(16, 4, 2, 2)
    assert cpu_schedule.conv_tile(400, 8, AVX512, 8, 9, depthwise=True) == T(16, 5, 2, 2)
    assert cpu_schedule.conv_tile(96, 32, AVX512, 32, 9, depthwise=True) == T(16, 3, 2, 2)
    # Half vectors and 16-register units keep the row-first rule.
    assert cpu_schedule.conv_tile(16, 32, AVX2, 32, 144) == T(8, 1, 8, 1)
    # 8 divides 24, 16 does not: all three half-width vectors at once, four pixels
    assert cpu_schedule.conv_tile(24, 32, AVX512, 32, 9) == T(8, 3, 4, 1)
    assert cpu_schedule.conv_tile(40, 16, AVX512, 16, 144) == T(8, 5, 2, 1)
    assert cpu_schedule.conv_tile(24, 7, AVX512, 7, 9) == T(8, 1, 7, 1)  # no two pixels divide the row
    for unit, limit in ((AVX512, 24), (AVX2, 12), (NEON, 16)):
        for channels, width, height, reduction in ((64, 32, 32, 576), (512, 2, 2, 4608), (96, 7, 7, 9), (48, 32, 32, 432)):
            assert _fits(cpu_schedule.conv_tile(channels, width, unit, height, reduction), unit, limit)


def test_pruned_counts_get_a_divisor_or_a_whole_predicated_row():
    assert cpu_schedule.conv_tile(13, 32, AVX512).vector == 13
    assert cpu_schedule.conv_tile(45, 32, AVX512).vector == 15
    # No divisor in 4..32: whole vectors over all 37 channels at once, two pixels a row.
    tile = cpu_schedule.conv_tile(37, 32, AVX512, 32)
    assert (tile.vector, tile.vectors, tile.pixels) == (16, 3, 2)
    assert cpu_schedule.conv_tile(3, 32, AVX512).vectors == 1


def test_counts_without_a_small_divisor_are_computed_wider():
    pad = cpu_schedule.padded_channels
    for unit in (AVX512, AVX2, NEON):
        assert pad(64, unit, 576) == 64
        assert pad(45, unit, 576) == 48  # 15 of 16 lanes, 5 of 8, or no divisor of 4
        assert pad(3, unit, 27) == 3  # a stem's colour channels: too few to matter
    assert pad(181, AVX512, 16) == 192  # prime: a whole vector more, 6 %, however short the reduction
    assert pad(362, AVX512, 576) == 368
    assert pad(37, AVX512, 576) == 40  # 48 would add 30 %: the next multiple of 4
    assert pad(37, NEON, 576) == 40
    # Half a register (8 of 16 lanes): a whole one when that adds at most an eighth and the
    # reduction is long enough to pay for the wider output.
    assert [pad(c, AVX512, 9 * c) for c in (88, 184, 248, 72)] == [96, 192, 256, 80]
    assert [pad(c, AVX512, 32) for c in (88, 184)] == [88, 184]  # a 1x1 from 32 channels: writes dominate
    assert [pad(c, AVX512, 9 * c) for c in (24, 40, 56)] == [24, 40, 56]  # several half vectors
    assert [pad(c, unit, 9 * c) for c in (88, 184) for unit in (AVX2, NEON)] == [88, 88, 184, 184]


class AwkwardConvs(nn.Module):
    """Counts no vector divides, a prime wider than two vectors, stride 2, 1x1, dilation,
    depthwise and grouped convs, odd spatial sizes, a residual add and a classifier."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 13, 3, padding=1)
        self.b = nn.Conv2d(13, 37, 3, stride=2, padding=1)
        self.c = nn.Conv2d(37, 37, 3, padding=2, dilation=2, groups=37)
        self.d = nn.Conv2d(37, 24, 1)
        self.e = nn.Conv2d(24, 24, 3, padding=1, groups=3)
        self.f = nn.Conv2d(24, 24, 5, padding=2)
        self.head = nn.Linear(24 * 9 * 9, 7)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = nn.functional.relu6(self.c(self.b(x)))
        x = self.d(x)
        x = x + torch.relu(self.f(self.e(x)))
        return self.head(torch.flatten(x, 1))


class InvertedResiduals(nn.Module):
    """MobileNetV2's blocks: 1x1 convs whose input channels a vector divides (as the weights'
    do), depthwise convs (stride 1 and 2, a channel multiplier of 2) and a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.project = nn.Conv2d(32, 32, 1)
        self.dw2 = nn.Conv2d(32, 64, 3, stride=2, padding=1, groups=32)
        self.project2 = nn.Conv2d(64, 16, 1)

    def forward(self, x):
        x = nn.functional.relu6(self.stem(x))
        x = x + self.project(nn.functional.relu6(self.dw(x)))
        return self.project2(nn.functional.relu6(self.dw2(x)))


def _check(model, shape, tmp_path):
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    shapes = {sess.get_inputs()[0].name: list(shape)}
    lib = compile_mod.build(model, "host", tmp_path / "m.so", input_shapes=shapes, log=lambda m: None).library
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    refs = sess.run(None, {sess.get_inputs()[0].name: x})
    runner = TvmRunner(str(lib))
    runner.set_inputs([x])
    for got, ref in zip(runner.outputs(), refs):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_awkward_convs_match_onnxruntime(tmp_path):
    _check(export(AwkwardConvs(), tmp_path / "awkward.onnx", shape=(1, 3, 17, 17)), (1, 3, 17, 17), tmp_path)


# TVM's ONNX frontend cannot import these two (a Reshape of a shape it cannot infer), with or
# without acc's schedules.
TVM_CANNOT_IMPORT = {"unknown_op", "padded_shortcut"}


@pytest.mark.parametrize("name", sorted((set(graph_zoo.ZOO) | set(graph_zoo.VARIANTS)) - TVM_CANNOT_IMPORT))
def test_zoo_graphs_match_onnxruntime(name, tmp_path):
    model = graph_zoo.export(name, tmp_path / f"{name}.onnx")
    _check(model, graph_zoo.input_shape(name), tmp_path)


def _fused_kernels(model, target, name: str) -> dict:
    """The model's fused TIR functions whose names hold `name`, by name."""
    from tvm import relax

    onnx_model = compile_mod.load_onnx(model)
    mod = compile_mod.prepare(compile_mod.import_onnx(onnx_model, compile_mod.graph_inputs(onnx_model, {})))
    fused = compile_mod.fuse(mod, target)
    return {g.name_hint: f for g, f in fused.functions_items() if not isinstance(f, relax.Function) and name in g.name_hint}


def _fused_convs(model, target):
    return list(_fused_kernels(model, target, "conv").values())


class PrimeWidths(nn.Module):
    """A pruned ResNet's widths with a large prime factor (181, 2 x 181) and a residual add."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 181, 3, padding=1)
        self.b = nn.Conv2d(181, 181, 3, padding=1)
        self.c = nn.Conv2d(181, 362, 1, stride=2)

    def forward(self, x):
        x = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(x)) + x)


def test_prime_widths_match_onnxruntime_computed_on_whole_vectors(tmp_path):
    model = export(PrimeWidths(), tmp_path / "prime.onnx", shape=(1, 3, 8, 8))
    _check(model, (1, 3, 8, 8), tmp_path)
    target = targets.resolve("host", None).tvm_target()
    unit = cpu_schedule.VectorUnit.of(target)
    convs = _fused_convs(model, target)
    assert len(convs) == 3
    widths = sorted(cpu_schedule.padded_channels(count, unit, 0) for count in (181, 362))
    assert widths[0] > 181
    scripts = [func.script() for func in convs]
    # Each conv computes the padded count, sliced back in its epilogue.
    assert all("strided_slice" in script for script in scripts)
    assert sum(f"T.int64({widths[0]})" in script for script in scripts) == 2
    assert sum(f"T.int64({widths[1]})" in script for script in scripts) == 1


def test_inverted_residuals_match_onnxruntime(tmp_path):
    _check(export(InvertedResiduals(), tmp_path / "ir.onnx", shape=(1, 3, 16, 16)), (1, 3, 16, 16), tmp_path)


def test_only_weights_are_packed_and_folded_at_build_time(tmp_path):
    """A 1x1 conv's input matches the weights' shape rule too: packing it would run a copy of the
    activations on every inference. Every packing left must fold into a constant."""
    target = targets.resolve("host", None).tvm_target()
    onnx_model = compile_mod.load_onnx(export(InvertedResiduals(), tmp_path / "ir.onnx", shape=(1, 3, 16, 16)))
    mod = compile_mod.prepare(compile_mod.import_onnx(onnx_model, compile_mod.graph_inputs(onnx_model, {})))
    main = compile_mod.schedule_module(mod, target)["main"].script()
    assert "prepacked" in main and "weight_prepack" not in main


def _scheduled_convs(model, target):
    from tvm import s_tir

    for func in _fused_convs(model, target):
        sch = s_tir.Schedule(func)
        conv = next(b for b in cpu_schedule._root_blocks(sch) if cpu_schedule._is_conv(sch, b))
        depthwise = int(sch.get(sch.get_loops(conv)[-1]).extent) == 1
        cpu_schedule.schedule_conv(sch, conv, cpu_schedule.VectorUnit.of(target))
        yield depthwise, sch.mod["main"].script()


def test_depthwise_pads_inside_its_parallel_loop_and_pointwise_copies_nothing(tmp_path):
    target = targets.resolve("host", None).tvm_target()
    kinds = []
    for depthwise, script in _scheduled_convs(export(InvertedResiduals(), tmp_path / "ir.onnx", (1, 3, 16, 16)), target):
        if depthwise:  # one parallel loop, the padding under it
            assert script.count("T.parallel") == 1
            assert script.index("T.parallel") < script.index('T.sblock("pad_temp")')
            kinds.append("depthwise")
        else:  # the frontend's zero-padding copy of a 1x1 conv's input is inlined
            kinds.append("padded" if "pad_temp" in script else "unpadded")
    assert sorted(kinds) == ["depthwise", "depthwise", "padded", "unpadded", "unpadded"], kinds


def test_every_conv_gets_the_register_kernel(tmp_path):
    from tvm import s_tir

    target = targets.resolve("host", None).tvm_target()
    funcs = _fused_convs(export(AwkwardConvs(), tmp_path / "awkward.onnx", shape=(1, 3, 17, 17)), target)
    assert len(funcs) == 6
    for func in funcs:
        sch = s_tir.Schedule(func)
        conv = next(b for b in cpu_schedule._root_blocks(sch) if cpu_schedule._is_conv(sch, b))
        cpu_schedule.schedule_conv(sch, conv, cpu_schedule.VectorUnit.of(target))  # raises if it does not fit
        assert "T.vectorized" in sch.mod["main"].script()


def test_tuning_measures_the_default_schedule_first(tmp_path, monkeypatch):
    from acc.backends import tune

    model = export(OneConv(), tmp_path / "one.onnx", shape=(1, 4, 8, 8))
    onnx_model = compile_mod.load_onnx(model)
    inputs = compile_mod.graph_inputs(onnx_model, {})
    mod = compile_mod.prepare(compile_mod.import_onnx(onnx_model, inputs))
    spec = targets.resolve("host", None)
    lines = []
    report = tune.tune(mod, spec, trials_per_task=0, db_root=tmp_path / "db", log=lines.append)
    assert report.tasks == 1 and report.defaults == 1, lines
    assert "1 with acc's default schedule measured" in lines[-1]
    # Built from the database (the default's record), the conv still matches onnxruntime.
    _check_db = compile_mod.build(model, "host", tmp_path / "one.so", tune_db=tmp_path / "db", log=lambda m: None)
    x = np.random.default_rng(6).standard_normal((1, 4, 8, 8)).astype(np.float32)
    runner = TvmRunner(str(_check_db.library))
    runner.set_inputs([x])
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(runner.outputs()[0], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    # A measured default is not a search: asked for trials, tuning still searches the task, once.
    searched = tune.tune(mod, spec, trials_per_task=2, db_root=tmp_path / "db", log=lines.append)
    assert (searched.tuned, searched.reused, searched.defaults) == (1, 0, 0), lines
    again = tune.tune(mod, spec, trials_per_task=2, db_root=tmp_path / "db", log=lines.append)
    assert (again.tuned, again.reused, again.defaults) == (0, 1, 0), lines
    # Once acc's kernels change (cpu_schedule.VERSION), the old database gets the new default
    # measured beside the records it holds, once.
    monkeypatch.setattr(cpu_schedule, "VERSION", cpu_schedule.VERSION + 1)
    newer = tune.tune(mod, spec, trials_per_task=0, db_root=tmp_path / "db", log=lines.append)
    assert (newer.defaults, newer.reused) == (1, 1), lines
    assert tune.tune(mod, spec, trials_per_task=0, db_root=tmp_path / "db", log=lines.append).defaults == 0



class ClassifierHead(nn.Module):
    """Gemm layers after a conv: 48 -> 40 (ReLU fused into the tile), 40 -> 10 (no vector divides 10)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(48, 40)
        self.fc2 = nn.Linear(40, 10)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def test_one_row_dense_layers_get_the_vector_kernel_and_match_onnxruntime(tmp_path):
    target = targets.resolve("host", None).tvm_target()
    model = export(ClassifierHead(), tmp_path / "head.onnx", shape=(1, 3, 8, 8))
    matmuls = _fused_kernels(model, target, "matmul")
    assert len(matmuls) == 2
    scheduled = {name: cpu_schedule.schedule_func(f, target, convs_only=True) for name, f in matmuls.items()}
    ours = [name for name, sch in scheduled.items() if sch is not None]
    assert len(ours) == 1  # 40 outputs: vectors of 8 (AVX-512, AVX2) or 4 (NEON); 10: left to TVM's rules
    script = scheduled[ours[0]].mod["main"].script()
    assert "T.parallel" in script and "T.vectorized" in script
    _check(model, (1, 3, 8, 8), tmp_path)
    # Two rows are not a one-row dense: TVM's rules keep them.
    model2 = export(ClassifierHead(), tmp_path / "head2.onnx", shape=(2, 3, 8, 8))
    assert all(cpu_schedule.schedule_func(f, target, convs_only=True) is None
               for f in _fused_kernels(model2, target, "matmul").values())


class Pools(nn.Module):
    """An ImageNet-style stem pool (3x3, stride 2, padded), an average pool and a global mean."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 3, stride=2, padding=1)
        x = nn.functional.avg_pool2d(x, 2)
        return self.head(x.mean((2, 3)))


def test_window_reductions_run_on_channel_vectors_and_match_onnxruntime(tmp_path):
    target = targets.resolve("host", None).tvm_target()
    model = export(Pools(), tmp_path / "pools.onnx", shape=(1, 3, 18, 18))
    pools = _fused_kernels(model, target, "pool")
    assert pools
    for func in pools.values():
        script = cpu_schedule.schedule_func(func, target).mod["main"].script()
        # the window loops sit outside one vector of channels; the padded copy is gone
        assert "T.vectorized" in script and "pad_temp = " not in script, script
    _check(model, (1, 3, 18, 18), tmp_path)
