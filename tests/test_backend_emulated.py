"""The emulated aarch64 device (qemu-user + Debian arm64 rootfs + TVM wheel) runs a cross-compiled build.

The first run builds the device under the user cache folder (about a minute with a fast mirror);
later runs reuse it.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from acc.backends import compile as compile_mod
from acc.backends import emulated_arm64
from acc.cli import main
from backend_models import TinyCNN, export

pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    missing = emulated_arm64.missing_tools() + ([] if shutil.which("aarch64-linux-gnu-g++") else ["g++-aarch64-linux-gnu"])
    if missing:
        return f"needs Debian packages {' '.join(missing)} (make system-deps installs them)"
    if os.geteuid() != 0 and not emulated_arm64.EmulatedArm64(emulated_arm64.cache_home()).is_ready():
        return "building the emulated rootfs needs root (debootstrap) and none is cached"
    return None


@pytest.fixture(scope="module")
def device():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    server = emulated_arm64.start_server(log=lambda m: None)
    yield server
    server.stop()


def test_emulated_device_serves_a_cross_compiled_build(device, tmp_path, capsys):
    model = export(TinyCNN(), tmp_path / "tiny.onnx")
    lib = tmp_path / "tiny_arm64.so"
    compile_mod.build(model, "arm64", lib, log=lambda m: None)
    out = tmp_path / "r.json"
    assert main(["bench", str(lib), "--rpc", device.address, "--repeat", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["target"] == "arm64" and res["models"][0]["max_abs_diff"] < 1e-4
    assert res["models"][0]["tvm"]["median_ms"] > 0


def test_emulated_device_is_aarch64_and_rejects_host_libraries(device, tmp_path, capsys):
    host_lib = compile_mod.build(export(TinyCNN(), tmp_path / "t.onnx"), "host", tmp_path / "host.so",
                                 log=lambda m: None).library
    assert main(["bench", str(host_lib), "--rpc", device.address, "--repeat", "1"]) == 2
    assert "could not load the library" in capsys.readouterr().err


def test_cli_build_only_reuses_the_cache(device, capsys):
    assert main(["device", "start-emulated-arm64", "--build-only"]) == 0
    assert "emulated arm64 device ready in" in capsys.readouterr().out


def test_latency_table_timed_on_the_device(device, tmp_path):
    """--metric latency on arm64: the layer shapes go to the device in one library and are timed there."""
    from acc.backends import layer_latency, rpc, targets
    from acc.passes.analysis import analyze
    from acc.passes.importer import import_model
    from acc.prune.latency_cost import build_latency_model

    # width 32: a 25 % cut predicted at 0.12 of the full model's time (0.28 at width 8, where
    # per-call overhead weighs more): the ordering asserted below holds on a busy machine too
    analysis = analyze(import_model(export(TinyCNN(width=32), tmp_path / "tiny.onnx")))
    spec = targets.resolve("arm64")
    timer = layer_latency.TvmTimer(spec, session=rpc.connect(device.address), device=f"rpc {device.address}",
                                   cc=spec.cc, cache_dir=tmp_path / "cache", rounds=2, min_repeat_ms=0,
                                   log=lambda m: None)
    lm = build_latency_model(analysis, timer.time_layers, timer.time_models, how=timer.describe(), log=lambda m: None)
    assert lm.measured_ms > 0 and all((x.table > 0).all() for x in lm.nodes)
    assert "tvm-llvm-" in timer.cache.path.name and lm.how["device"].startswith("rpc ")
    full = [1.0] * len(analysis.prunable_groups)
    assert lm.predict([0.25 * f for f in full]) < lm.predict(full)
