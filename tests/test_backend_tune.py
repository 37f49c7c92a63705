"""MetaSchedule tuning: a few trials on one task, with the builder fix; the database is reused."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from acc.backends import compile as compile_mod
from acc.backends.timing import TvmRunner
from backend_models import OneConv, export

pytestmark = pytest.mark.slow


def test_tune_one_task_then_reuse_the_database(tmp_path):
    model = export(OneConv(), tmp_path / "conv.onnx", shape=(1, 4, 16, 16))
    db = tmp_path / "db"
    first = compile_mod.build(model, "host", tmp_path / "a.so", tune_trials=4, tune_db=db, log=lambda m: None)
    assert first.tuning["tasks"] == 1 and first.tuning["tuned"] == 1 and first.tuning["reused"] == 0

    from tvm.s_tir import meta_schedule as ms

    records = ms.database.JSONDatabase(work_dir=first.tuning["db"]).get_all_tuning_records()
    # Built and measured: with the builder timing out, run_secs would be missing or 1e10.
    measured = [r for r in records if r.run_secs and float(r.run_secs[0]) < 1.0]
    assert len(measured) >= 2, f"{len(records)} records, {len(measured)} measured"

    x = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    runner = TvmRunner(str(first.library))
    runner.set_inputs([x])
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(runner.outputs()[0], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)

    # Same workload again (another file, same conv): nothing is tuned twice.
    again = export(OneConv(), tmp_path / "conv2.onnx", shape=(1, 4, 16, 16), seed=5)
    second = compile_mod.build(again, "host", tmp_path / "b.so", tune_trials=4, tune_db=db, log=lambda m: None)
    assert second.tuning["reused"] == 1 and second.tuning["tuned"] == 0
    assert len(ms.database.JSONDatabase(work_dir=second.tuning["db"]).get_all_tuning_records()) == len(records)


def test_tune_through_an_rpc_tracker(tmp_path):
    from acc.backends import rpc

    model = export(OneConv(), tmp_path / "conv.onnx", shape=(1, 4, 16, 16))
    with rpc.start_tracker() as tracker, rpc.start_server(tracker=("127.0.0.1", tracker.port), key="tune-test"):
        result = compile_mod.build(model, "host", tmp_path / "r.so", tune_trials=2, tune_db=tmp_path / "db",
                                   tracker=tracker.address, key="tune-test", log=lambda m: None)
    assert result.tuning["tuned"] == 1

    from tvm.s_tir import meta_schedule as ms

    records = ms.database.JSONDatabase(work_dir=result.tuning["db"]).get_all_tuning_records()
    assert any(r.run_secs and float(r.run_secs[0]) < 1.0 for r in records), "no trial was measured over RPC"
