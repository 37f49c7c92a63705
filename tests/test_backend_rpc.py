"""A real TVM RPC tracker and server on 127.0.0.1 serve a build; errors when they are not there."""

from __future__ import annotations

import json
import os

import pytest

from acc.backends import compile as compile_mod
from acc.backends import rpc
from acc.cli import main
from backend_models import TinyCNN, export


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("rpc")
    return compile_mod.build(export(TinyCNN(), d / "tiny.onnx"), "host", d / "tiny.so", log=lambda m: None).library


@pytest.mark.slow
def test_tracker_and_server_serve_a_build(lib, tmp_path, capsys):
    tracker = rpc.start_tracker()
    server = None
    try:
        server = rpc.start_server(tracker=("127.0.0.1", tracker.port), key="local-test")
        out = tmp_path / "r.json"
        assert main(["bench", str(lib), "--tracker", tracker.address, "--key", "local-test", "--repeat", "3",
                     "--json", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["device"].startswith("tracker") and res["models"][0]["max_abs_diff"] < 1e-4
        assert res["models"][0]["tvm"]["rounds"] == 3 and res["models"][0]["onnxruntime"] is None
        # A key nobody registered.
        assert main(["bench", str(lib), "--tracker", tracker.address, "--key", "phone"]) == 2
        err = capsys.readouterr().err
        assert "no RPC server with key 'phone'" in err and "local-test" in err
    finally:
        for proc in (server, tracker):
            if proc is not None:
                proc.stop()
    for proc in (server, tracker):
        assert group_gone(proc.proc.pid), "RPC processes outlived stop()"


@pytest.mark.slow
def test_direct_server(lib):
    with rpc.start_server() as server:
        from acc.backends.bench import bench

        res = bench(lib, rpc=server.address, repeat=2, log=lambda m: None)
        assert res.models[0].max_abs_diff < 1e-4 and res.models[0].tvm.median_ms > 0
    assert group_gone(server.proc.pid)


def test_unreachable_tracker_and_server_are_one_line(lib, capsys):
    port = rpc.free_port()  # nothing listens there
    assert main(["bench", str(lib), "--tracker", f"127.0.0.1:{port}", "--key", "k"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach RPC tracker at 127.0.0.1:{port}" in err and err.count("\n") == 1
    assert main(["bench", str(lib), "--rpc", f"127.0.0.1:{port}"]) == 2
    assert "cannot reach RPC server" in capsys.readouterr().err
    assert main(["bench", str(lib), "--rpc", "nonsense"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert main(["bench", str(lib), "--tracker", f"127.0.0.1:{port}"]) == 2
    assert "--key" in capsys.readouterr().err


def test_server_that_dies_at_start_is_reported(tmp_path):
    # A "python" that exits at once: start_server must say so rather than wait forever.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho broken interpreter >&2\nexit 1\n")
    fake.chmod(0o755)
    from acc.errors import ToolchainError

    with pytest.raises(ToolchainError, match="exited at start: broken interpreter"):
        rpc.start_server(python=str(fake), timeout=20)
