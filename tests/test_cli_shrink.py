"""`acc analyze` and `acc shrink` from the command line: outputs, reports and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from acc.cli import main


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_analyze_prints_groups_and_boundaries(zoo_path, capsys):
    code, out, _ = run_cli(["analyze", zoo_path("residual")], capsys)
    assert code == 0
    assert "/blocks.0.0/Conv" in out and "graph input 'input'" in out and "7 groups, 5 prunable" in out


def test_analyze_json(zoo_path, capsys):
    code, out, _ = run_cli(["analyze", zoo_path("depthwise"), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["totals"]["prunable_groups"] == 2
    assert any(m["role"] == "dw_weight" for g in info["groups"] for m in g["members"])


def test_shrink_ratio_writes_model_and_report(zoo_path, tmp_path, capsys):
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    code, text, _ = run_cli(["shrink", zoo_path("residual"), "-o", out, "--ratio", "0.5", "--report", report], capsys)
    assert code == 0 and "FLOPs" in text
    onnx.checker.check_model(onnx.load(out))
    data = json.loads(report.read_text())
    assert data["after"]["flops"] < data["before"]["flops"]
    row = next(g for g in data["groups"] if g["group"] == "/stem/Conv")
    assert row["width_before"] == 8 and row["width_after"] == 4 and len(row["kept"]) == 4
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["shrink", "{missing}", "-o", "{out}"], "no such file"),
        (["shrink", "{garbage}", "-o", "{out}"], "ONNX"),
        (["shrink", "{model}", "-o", "{out}", "--ratio", "1.5"], "--ratio must be between 0 and 1"),
        (["shrink", "{model}", "-o", "{out}", "--ratio", "0"], "--ratio must be between 0 and 1"),
        (["shrink", "{model}", "-o", "{nofolder}"], "output folder does not exist"),
        (["analyze", "{missing}"], "no such file"),
        (["shrink", "{model}", "-o", "{out}", "--input-shape", "input=banana"], "--input-shape"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(zoo_path, tmp_path, capsys, args, message):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not onnx")
    subs = {"missing": tmp_path / "missing.onnx", "garbage": garbage, "model": zoo_path("residual"),
            "out": tmp_path / "out.onnx", "nofolder": tmp_path / "nofolder" / "out.onnx"}
    code, out, err = run_cli([a.format(**subs) for a in args], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists()


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "acc.cli", "shrink", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("acc shrink: error: no such file")


def test_lossless_shrink_never_writes_more_than_it_read(zoo_path, tmp_path, capsys):
    # The legacy export of a Linear on the last axis transposes its weight at run time: the import
    # folds it, and the weight it read must not stay beside the folded one.
    model = zoo_path("channels_last_matmul")
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    code, _, _ = run_cli(["shrink", model, "-o", out, "--report", report], capsys)
    data = json.loads(report.read_text())
    assert code == 0 and data["unchanged"] is None
    assert data["after"]["params"] == data["before"]["params"]
    assert data["bytes"]["after"] == out.stat().st_size <= model.stat().st_size == data["bytes"]["before"]


def test_lossless_shrink_that_would_grow_writes_the_input_back(zoo_path, tmp_path, capsys, monkeypatch):
    import numpy as np
    from onnx import numpy_helper

    import acc.passes.shrink as shrink_module

    real = shrink_module.purify

    def ballast(model):
        result = real(model)
        result.model.graph.initializer.append(numpy_helper.from_array(np.zeros(1000, np.float32), "ballast"))
        return result

    monkeypatch.setattr(shrink_module, "purify", ballast)
    model, out, report = zoo_path("residual"), tmp_path / "p.onnx", tmp_path / "r.json"
    code, text, _ = run_cli(["shrink", model, "-o", out, "--report", report], capsys)
    assert code == 0 and "the input is returned unchanged" in text and "more parameters" in text
    assert out.read_bytes() == onnx.load(model).SerializeToString()
    assert "returned unchanged" in json.loads(report.read_text())["unchanged"]
