"""Every zoo graph through `acc prune --uniform 0.3` for one short epoch: smaller and verified.

Both exporters, every pattern of tests/graph_zoo.py, and the variants (NHWC input, two heads,
symbolic batch), each on 64 random inputs without labels (distillation from the original).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import graph_zoo
from acc.cli import main
from acc.passes.counting import count

ARGS = ["--uniform", "0.3", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "32", "--no-progress"]

CASES = [pytest.param(name, dynamo, id=f"{name}-{'dynamo' if dynamo else 'legacy'}")
         for name in [*sorted(graph_zoo.ZOO), *graph_zoo.VARIANTS] for dynamo in (False, True)]


@pytest.fixture(scope="module")
def variant_path(tmp_path_factory):
    folder, cache = tmp_path_factory.mktemp("variants"), {}

    def get(name, dynamo):
        if (name, dynamo) not in cache:
            sub = folder / f"{name}_{'dynamo' if dynamo else 'legacy'}"
            sub.mkdir()
            cache[name, dynamo] = graph_zoo.export(name, sub / "model.onnx", dynamo=dynamo)
        return cache[name, dynamo]

    return get


@pytest.fixture(scope="module")
def random_data(tmp_path_factory):
    """64 random float inputs of a shape (batch dim excluded), in an .npz without labels."""
    folder, cache = tmp_path_factory.mktemp("data"), {}

    def get(shape):
        if shape not in cache:
            path = folder / f"{'x'.join(map(str, shape))}.npz"
            np.savez(path, inputs=np.random.default_rng(0).standard_normal((64, *shape)).astype(np.float32))
            cache[shape] = path
        return cache[shape]

    return get


@pytest.mark.parametrize("name, dynamo", CASES)
def test_prune_one_epoch_gives_a_smaller_verified_model(zoo_path, variant_path, random_data, tmp_path, capsys, name, dynamo):
    model = zoo_path(name, dynamo) if name in graph_zoo.ZOO else variant_path(name, dynamo)
    data = random_data(graph_zoo.input_shape(name)[1:])
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    code = main(["prune", str(model), "--data", str(data), "-o", str(out), "--report", str(report), *ARGS])
    err = capsys.readouterr().err
    assert code == 0, err
    r = json.loads(report.read_text())
    assert r["objective"].startswith("distillation")
    assert r["params"]["after_dense"] < r["params"]["before"]
    for v in r["verification"]:
        assert v["max_abs_error"] <= 1e-4 * v["max_abs_output"] + 1e-6
    small = onnx.load(out)
    onnx.checker.check_model(small)
    assert count(small).params == r["params"]["after_dense"]
    print(f"{name}-{'dynamo' if dynamo else 'legacy'}: {r['params']['before']} -> {r['params']['after_dense']} parameters")
