"""`acc build`: host builds match onnxruntime, aarch64 builds are aarch64 ELFs, errors are one line."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnxruntime as ort
import pytest

from acc.backends import compile as compile_mod
from acc.backends.timing import TvmRunner
from acc.cli import main
from backend_models import TinyCNN, export

EM_AARCH64, EM_X86_64 = 183, 62


def elf_machine(path) -> int:
    head = open(path, "rb").read(20)
    assert head[:4] == b"\x7fELF", "not an ELF file"
    return struct.unpack("<H", head[18:20])[0]


def run_tvm(lib, x):
    runner = TvmRunner(str(lib))
    runner.set_inputs([x])
    return runner.outputs()[0]


def run_ort(model, x):
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export(TinyCNN(), tmp_path_factory.mktemp("tiny") / "tiny.onnx")


def test_host_build_matches_onnxruntime_and_writes_metadata(tiny, tmp_path, capsys):
    lib = tmp_path / "tiny.so"
    assert main(["build", str(tiny), "--target", "host", "-o", str(lib)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert elf_machine(lib) == EM_X86_64
    meta = json.loads((tmp_path / "tiny.so.json").read_text())
    assert meta["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "y", "shape": [1, 10], "dtype": "float32"}]
    assert meta["target_name"] == "host" and meta["target"]["kind"] == "llvm"
    assert meta["acc_version"] and meta["tvm_version"].startswith("0.27")
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_tvm(lib, x), run_ort(tiny, x), rtol=1e-4, atol=1e-4)
    # Nothing half-written is left beside the outputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.so", "tiny.so.json"]


def test_dynamic_batch_takes_input_shape(tmp_path):
    model = export(TinyCNN(), tmp_path / "dyn.onnx", dynamic_batch=True)
    result = compile_mod.build(model, "host", tmp_path / "dyn.so", input_shapes={"x": [2, 3, 16, 16]}, log=lambda m: None)
    assert result.inputs[0].shape == [2, 3, 16, 16] and result.outputs[0].shape == [2, 10]
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_tvm(result.library, x), run_ort(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_models_of_the_repo_match_onnxruntime(name, tmp_path):
    export_onnx = pytest.importorskip("models.export").export_onnx
    model = export_onnx(name, tmp_path / f"{name}.onnx")
    lib = compile_mod.build(model, "host", tmp_path / f"{name}.so", log=lambda m: None).library
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = run_ort(model, x)
    np.testing.assert_allclose(run_tvm(lib, x), ref, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("target", ["arm64", "rpi4", "rpi5"])
def test_aarch64_build_is_an_aarch64_elf(tiny, tmp_path, target):
    lib = tmp_path / f"{target}.so"
    assert main(["build", str(tiny), "--target", target, "-o", str(lib)]) == 0
    assert elf_machine(lib) == EM_AARCH64
    assert json.loads((tmp_path / f"{target}.so.json").read_text())["target"]["mtriple"] == "aarch64-linux-gnu"


def test_target_json_string_and_file(tiny, tmp_path):
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55", "mattr": ["+neon"]}
    assert main(["build", str(tiny), "--target-json", json.dumps(target), "-o", str(tmp_path / "a.so")]) == 0
    assert elf_machine(tmp_path / "a.so") == EM_AARCH64
    (tmp_path / "t.json").write_text(json.dumps(target))
    assert main(["build", str(tiny), "--target-json", str(tmp_path / "t.json"), "-o", str(tmp_path / "b.so")]) == 0
    assert json.loads((tmp_path / "b.so.json").read_text())["target"]["mcpu"] == "cortex-a55"


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_target_is_one_line(tiny, tmp_path, capsys):
    err = one_line_error(capsys, ["build", str(tiny), "--target", "toaster", "-o", str(tmp_path / "m.so")])
    assert "unknown target 'toaster'" in err and "arm64" in err
    err = one_line_error(capsys, ["build", str(tiny), "--target-json", '{"kind": "nosuchkind"}', "-o", str(tmp_path / "m.so")])
    assert "nosuchkind" in err
    err = one_line_error(capsys, ["build", str(tiny), "--target-json", "{not json", "-o", str(tmp_path / "m.so")])
    assert "--target-json" in err
    assert not (tmp_path / "m.so").exists()


def test_missing_cross_compiler_names_the_package(tiny, tmp_path, capsys, monkeypatch):
    err = one_line_error(capsys, ["build", str(tiny), "--target", "arm64", "--cc", "/nonexistent/aarch64-linux-gnu-g++",
                                  "-o", str(tmp_path / "m.so")])
    assert "not found" in err and "apt-get install g++-aarch64-linux-gnu" in err
    # The default cross compiler, looked up on a PATH that lacks it.
    monkeypatch.setenv("PATH", str(tmp_path))
    err = one_line_error(capsys, ["build", str(tiny), "--target", "rpi4", "-o", str(tmp_path / "m.so")])
    assert "aarch64-linux-gnu-g++ not found" in err and "g++-aarch64-linux-gnu" in err


def test_android_target_needs_the_ndk(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    err = one_line_error(capsys, ["build", str(tiny), "--target", "pixel", "-o", str(tmp_path / "m.so")])
    assert "TVM_NDK_CC" in err


def test_bad_inputs_are_one_line(tiny, tmp_path, capsys):
    err = one_line_error(capsys, ["build", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "m.so")])
    assert "no such file" in err
    err = one_line_error(capsys, ["build", str(tiny), "--input-shape", "x=1x3", "-o", str(tmp_path / "m.so")])
    assert "does not fit" in err
    err = one_line_error(capsys, ["build", str(tiny), "--input-shape", "nope=1x3x16x16", "-o", str(tmp_path / "m.so")])
    assert "names no input" in err
    err = one_line_error(capsys, ["build", str(tiny), "-o", str(tmp_path / "no" / "dir" / "m.so")])
    assert "output folder does not exist" in err


def test_backends_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, acc.backends.compile, acc.backends.bench, acc.backends.tune, acc.backends.rpc, "
            "acc.backends.emulated_arm64, acc.commands.build, acc.commands.bench, acc.commands.device; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "acc.backends imported torch"
