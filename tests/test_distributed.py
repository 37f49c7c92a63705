"""Multi-process training (torch.distributed, gloo on the CPU): `--devices cpu,cpu` runs two ranks
of `acc prune` / `acc compile` and must land where one process lands at the same global batch;
a killed two-process run resumes to the uninterrupted result; bad device lists are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from acc.cli import main
from acc.passes.verify import compare
from acc.prune import distributed, launch

from test_prune import tiny  # noqa: F401 - the tiny CNN fixture

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "data" / "cifar10_demo" / "train.jpeg.npz"
PRUNE = ["--uniform", "0.5", "--admm", "on", "--epochs", "2", "--finetune-epochs", "2", "--limit", "320", "--batch-size", "64",
         "--no-progress", "--seed", "3"]


def _prune_args(model, out: Path) -> list[str]:
    return ["prune", str(model), "--data", str(DEMO), "-o", str(out), "--report", str(out) + ".json", *PRUNE]


def _weights(path: Path) -> dict:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):  # noqa: F811
    """One-process and two-process runs of the same prune (made once, read by several tests)."""
    folder = tmp_path_factory.mktemp("ddp")
    one, two = folder / "one.onnx", folder / "two.onnx"
    assert main(_prune_args(tiny, one)) == 0
    assert main(_prune_args(tiny, two) + ["--devices", "cpu,cpu"]) == 0
    return folder, one, two


def test_two_processes_reach_what_one_process_reaches(runs):
    _, one, two = runs
    r1 = json.loads(Path(str(one) + ".json").read_text())
    r2 = json.loads(Path(str(two) + ".json").read_text())
    assert r1["world_size"] == 1 and r2["world_size"] == 2
    # Same target: the rates fix the structure; near-zero purification may move a channel or two.
    assert abs(r2["params"]["after_dense"] - r1["params"]["after_dense"]) <= 0.05 * r1["params"]["after_dense"]
    # Same global batch and learning rate; each rank's BatchNorm sees half the batch (no
    # SyncBatchNorm on the CPU) and sums run in another order, so the losses are close, not equal.
    loss1, loss2 = r1["accuracy_after"]["val"]["loss"], r2["accuracy_after"]["val"]["loss"]
    assert abs(loss2 - loss1) <= 0.1 * loss1 + 0.05, (loss1, loss2)
    # Training moved on two ranks as on one: per epoch, the training losses stay close.
    for h1, h2 in zip(r1["history"], r2["history"]):
        if "train_loss" in h1:
            assert abs(h1["train_loss"] - h2["train_loss"]) <= 0.1 * h1["train_loss"] + 0.05
    # Rank 0 alone rewrote and verified: one output, checked against its masked model.
    assert r2["verification"][0]["max_abs_error"] <= 1e-4 * r2["verification"][0]["max_abs_output"] + 1e-6
    assert not list(one.parent.glob("*.tmp*"))


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(runs, tiny):  # noqa: F811
    folder, _, two = runs
    out = folder / "resumed.onnx"
    ckpt = Path(str(out) + ".ckpt")
    command = [sys.executable, "-m", "acc.cli", *_prune_args(tiny, out), "--devices", "cpu,cpu"]
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.wait()
    assert ckpt.exists() and not out.exists()
    assert main(_prune_args(tiny, out) + ["--devices", "cpu,cpu", "--resume"]) == 0
    resumed, uninterrupted = _weights(out), _weights(two)
    assert resumed.keys() == uninterrupted.keys()
    assert all(np.array_equal(resumed[k], uninterrupted[k]) for k in resumed)
    r_resumed = json.loads(Path(str(out) + ".json").read_text())
    r_whole = json.loads(Path(str(two) + ".json").read_text())
    assert r_resumed["history"] == r_whole["history"]


def test_compile_on_two_processes_searches_once_and_verifies(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "c"
    code = main(["compile", str(tiny), "--rate", "1.5x", "--data", str(DEMO.parent), "-o", str(out), "--rounds", "1",
                 "--budget-epochs", "2", "--search-steps", "2", "--eval-images", "64", "--search-finetune-steps", "5",
                 "--limit", "192", "--test-limit", "100", "--no-progress", "--devices", "cpu,cpu"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["params"]["reduction_dense"] >= 1.4
    assert len(report["search"]) == 1 and report["search"][0]["evaluated"] >= 1
    # The output is the verified rewrite of the last round's masked model (checked here again).
    assert compare(onnx.load(out / "model.onnx"), onnx.load(out / "state" / "round1" / "model.onnx"))[0].max_abs_error == 0


@pytest.mark.parametrize("devices, message", [("cuda:3,cuda:4", "does not exist"), ("tpu:0,cpu", "not a device"),
                                              (",", "comma-separated")])
def test_bad_devices_are_one_line(tiny, tmp_path, capsys, devices, message):  # noqa: F811
    out = tmp_path / "o.onnx"
    code = main(_prune_args(tiny, out) + ["--devices", devices])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_a_failing_rank_is_reported_once(tiny, tmp_path, capfd):  # noqa: F811
    code = main(["prune", str(tiny), "--data", str(tmp_path / "missing"), "--uniform", "0.5", "-o",
                 str(tmp_path / "o.onnx"), "--no-progress", "--devices", "cpu,cpu"])
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "dataset not found" in err, err
    assert not (tmp_path / "o.onnx").exists()


def test_global_batches_are_the_same_count_on_every_rank():
    assert distributed.shard_steps(320, 64, 1) == 5
    assert distributed.shard_steps(321, 64, 2) == 5  # a last batch of 1 row cannot feed 2 ranks
    assert distributed.shard_steps(322, 64, 2) == 6
    assert distributed.global_batch_len(5, 322, 64) == 2
    assert launch.without_devices(["prune", "m", "--devices", "cpu,cpu", "-o", "x"]) == ["prune", "m", "-o", "x"]
    assert launch.without_devices(["--devices=cpu,cpu", "m"]) == ["m"]
