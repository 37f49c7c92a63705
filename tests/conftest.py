"""Shared fixtures: exported graphs are made once per session and reused (exports take seconds)."""

from __future__ import annotations

import pytest

import graph_zoo


def _session_cache(folder, export):
    """get(name, dynamo=False) -> path of `export(name, path, dynamo)`, made once per session."""
    cache = {}

    def get(name: str, dynamo: bool = False):
        key = (name, dynamo)
        if key not in cache:
            sub = folder / f"{name}_{'dynamo' if dynamo else 'legacy'}"
            sub.mkdir()
            cache[key] = export(name, sub / "model.onnx", dynamo)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def zoo_path(tmp_path_factory):
    """Graphs of tests/graph_zoo.py: zoo_path('residual', dynamo=False)."""
    return _session_cache(tmp_path_factory.mktemp("zoo"), lambda name, path, dynamo: graph_zoo.export(name, path, dynamo=dynamo))


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """Models of models/ exported once: model_path('resnet20', dynamo=False)."""
    import torch

    from models.export import build, export_onnx, randomize_batchnorm

    def seeded(name):  # the weights must not depend on which tests ran first (torch's global generator)
        torch.manual_seed(0)
        return build(name)

    return _session_cache(
        tmp_path_factory.mktemp("models"),
        lambda name, path, dynamo: export_onnx(randomize_batchnorm(seeded(name)), path, dynamo=dynamo),
    )
