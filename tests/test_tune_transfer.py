"""A conv tuned at one width seeds the same conv pruned to another, with no trials."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from torch import nn

from acc.backends import compile as compile_mod
from acc.backends.timing import TvmRunner
from acc.backends.tune_transfer import Signature, refit_tile
from backend_models import OneConv, export

pytestmark = pytest.mark.slow


def conv(cin: int, cout: int) -> OneConv:
    module = OneConv()
    module.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    return module


def test_refit_tile_keeps_the_factors_that_divide():
    assert refit_tile([1, 2, 4, 8], 64) == [1, 2, 4, 8]
    assert refit_tile([1, 2, 4, 8], 48) == [1, 2, 3, 8]
    assert refit_tile([1, 2, 4, 8], 45) == [3, 1, 3, 5]
    assert refit_tile([4, 16], 7) == [1, 7]


def test_a_pruned_conv_is_built_with_the_schedule_of_the_tuned_width(tmp_path):
    db = tmp_path / "db"
    wide = export(conv(8, 8), tmp_path / "wide.onnx", shape=(1, 8, 16, 16))
    first = compile_mod.build(wide, "host", tmp_path / "wide.so", tune_trials=4, tune_db=db, log=lambda m: None)
    assert first.tuning["tuned"] == 1 and first.tuning["transferred"] == 0

    narrow = export(conv(8, 6), tmp_path / "narrow.onnx", shape=(1, 8, 16, 16), seed=3)
    logged = []
    second = compile_mod.build(narrow, "host", tmp_path / "narrow.so", tune_trials=0, tune_db=db, log=logged.append)
    assert second.tuning["transferred"] == 1 and second.tuning["tuned"] == 0, logged
    assert any("1 seeded from tuned neighbours" in line for line in logged), logged

    from tvm.s_tir import meta_schedule as ms

    records = ms.database.JSONDatabase(work_dir=second.tuning["db"]).get_all_tuning_records()
    widths = {Signature.of(r.workload.mod).extents for r in records}
    assert len(widths) == 2, "no record was committed for the 6-channel workload"

    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)
    runner = TvmRunner(str(second.library))
    runner.set_inputs([x])
    sess = ort.InferenceSession(str(narrow), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(runner.outputs()[0], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_latency_table_layers_get_the_tuned_schedules(tmp_path):
    """--metric latency with a tuning database: a layer shape at a pruned width is timed with the
    schedule of the tuned width, not the untuned default."""
    from acc.backends import layer_latency, targets
    from acc.prune.latency_cost import LayerShape

    db = tmp_path / "db"
    wide = export(conv(8, 8), tmp_path / "wide.onnx", shape=(1, 8, 16, 16))
    compile_mod.build(wide, "host", tmp_path / "wide.so", tune_trials=4, tune_db=db, log=lambda m: None)
    layer = LayerShape("Conv", ((1, 8, 16, 16), (6, 8, 3, 3)), (("kernel_shape", (3, 3)), ("pads", (1, 1, 1, 1))))
    tuned = layer_latency.TvmTimer(targets.resolve("host"), tune_root=db, cache_dir=tmp_path / "c", rounds=3,
                                   min_repeat_ms=5, log=lambda m: None)
    plain = layer_latency.TvmTimer(targets.resolve("host"), cache_dir=tmp_path / "c", rounds=3, min_repeat_ms=5,
                                   log=lambda m: None)
    (tuned_ms,), (plain_ms,) = tuned.time_layers([layer]), plain.time_layers([layer])
    assert tuned.seeded == 1 and tuned.cache.path != plain.cache.path
    assert tuned_ms > 0 and plain_ms > 0
