"""`acc bench` on the host: checked against onnxruntime, then timed with each engine in its own process."""

from __future__ import annotations

import json

import pytest

from acc.backends import compile as compile_mod
from acc.cli import main
from backend_models import TinyCNN, export


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return export(TinyCNN(8), d / "wide.onnx", seed=0), export(TinyCNN(4), d / "narrow.onnx", seed=1)


def test_bench_host_compares_two_models_and_onnxruntime(models, tmp_path, capsys):
    wide, narrow = models
    out = tmp_path / "bench.json"
    assert main(["bench", str(wide), "--compare", str(narrow), "--repeat", "5", "--min-repeat-ms", "5",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| wide.onnx | tvm |" in table and "| narrow.onnx | onnxruntime |" in table
    assert "speed-up of narrow.onnx over wide.onnx on tvm" in table
    res = json.loads(out.read_text())
    assert res["device"] == "host"
    for m in res["models"]:
        assert m["max_abs_diff"] < 1e-3
        for engine in ("tvm", "onnxruntime"):
            lat = m[engine]
            assert lat["rounds"] == 5 and 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    assert res["tvm_speedup"] > 0 and res["onnxruntime_speedup"] > 0


def test_bench_of_a_library_and_a_wrong_library(models, tmp_path, capsys):
    wide, narrow = models
    lib = tmp_path / "wide.so"
    compile_mod.build(wide, "host", lib, log=lambda m: None)
    assert main(["bench", str(lib), "--repeat", "2", "--min-repeat-ms", "1", "--no-onnxruntime"]) == 0
    assert "| wide.so | tvm |" in capsys.readouterr().out
    # Point the library's metadata at a different model with the same interface: outputs differ.
    meta_path = compile_mod.metadata_path(lib)
    meta = json.loads(meta_path.read_text())
    meta["model"] = str(export(TinyCNN(8), tmp_path / "other.onnx", seed=7))
    meta_path.write_text(json.dumps(meta))
    assert main(["bench", str(lib), "--repeat", "2"]) == 3
    err = capsys.readouterr().err
    assert "differ from onnxruntime" in err and err.count("\n") == 1


def test_bench_errors_are_one_line(models, tmp_path, capsys):
    wide, _ = models
    assert main(["bench", str(wide), "--target", "arm64"]) == 2
    assert "--rpc" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "nothing.so")]) == 2
    assert "no such file" in capsys.readouterr().err
    arm = compile_mod.build(wide, "arm64", tmp_path / "arm.so", log=lambda m: None).library
    assert main(["bench", str(arm)]) == 2
    assert "built for 'arm64'" in capsys.readouterr().err
    (tmp_path / "bare.so").write_bytes(b"")
    assert main(["bench", str(tmp_path / "bare.so")]) == 2
    assert "no metadata" in capsys.readouterr().err
