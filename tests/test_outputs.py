"""Outputs: files get the user's umask (0644 by default, not mkstemp's 0600), and the report's plots
label channel groups so that they can be told apart."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from acc import atomic
from acc.cli import main
from acc.report import group_labels, markdown

RESNET_GROUPS = ["/conv1/Conv"] + [f"/layers/layers.{s}/layers.{s}.{b}/conv1/Conv" for s in range(3) for b in range(3)] + [
    "/layers/layers.1/layers.1.0/conv2/Conv", "/layers/layers.2/layers.2.0/conv2/Conv"]


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, expected):
    with umask(mask):
        assert atomic.current_umask() == mask
        atomic.write_text(tmp_path / "a.json", "{}")
        with atomic.atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    assert mode(tmp_path / "a.json") == expected and mode(tmp_path / "b.bin") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]  # no temp file left


def test_shrink_writes_its_model_and_report_readable_by_others(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        torch.onnx.export(net.eval(), (torch.randn(1, 3, 8, 8),), str(model), input_names=["x"], dynamo=False)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    with umask(0o022):
        assert main(["shrink", str(model), "-o", str(out), "--ratio", "0.5", "--report", str(report)]) == 0
    assert mode(out) == 0o644 and mode(report) == 0o644
    with umask(0o077):
        assert main(["shrink", str(model), "-o", str(out), "--ratio", "0.5", "--report", str(report)]) == 0
    assert mode(out) == 0o600 and mode(report) == 0o600  # replaced under the stricter umask


def test_group_labels_tell_resnet_groups_apart():
    labels = group_labels(RESNET_GROUPS)
    assert len(set(labels)) == len(labels)
    assert labels[:3] == ["conv1", "layers.0.0/conv1", "layers.0.1/conv1"]
    assert labels[-1] == "layers.2.0/conv2"
    assert group_labels(["Conv_0", "Conv_3", "a/b/Conv", "x/b/Conv"]) == ["Conv_0", "Conv_3", "a/b", "x/b"]
    # Alike to the end, or too long: numbered (the row of report.md's channel-group table).
    assert group_labels(["a", "a", "/" + "x" * 40]) == ["#1", "#2", "#3"]


def test_report_md_lists_the_plot_labels():
    widths = [{"group": g, "before": 16, "after": 8} for g in RESNET_GROUPS]
    score = {"accuracy": 0.5}
    report = {"model": "m.onnx", "rate_requested": 2.0, "metric": "params", "rounds": 1, "seconds": 1.0,
              "accuracy_before": {"val": score}, "accuracy_after": {"val": score},
              "params": {"before": 10, "after_dense": 5, "after_nonzero": 5}, "flops": {"before": 10, "after": 5},
              "per_round": [{"round": 1, "goal": 5, "params_after": 5, "flops_after": 5, "accuracy_after": {"val": score},
                             "rates": {}, "seconds": 1.0}], "widths": widths, "search": [{"trace": []}]}
    text = markdown(report, ["widths.png"])
    assert "|  # | plot label       | group" in text
    assert "| 11 | layers.1.0/conv2 | /layers/layers.1/layers.1.0/conv2/Conv" in text
