"""Shared fixtures: exported graphs are made once per session and reused (exports take seconds)."""

from __future__ import annotations

import pytest

import graph_zoo


@pytest.fixture(scope="session")
def zoo_path(tmp_path_factory):
    cache = {}
    folder = tmp_path_factory.mktemp("zoo")

    def get(name: str, dynamo: bool = False):
        key = (name, dynamo)
        if key not in cache:
            sub = folder / f"{name}_{'dynamo' if dynamo else 'legacy'}"
            sub.mkdir()
            cache[key] = graph_zoo.export(name, sub / "model.onnx", dynamo=dynamo)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """Models of models/ exported once: model_path('resnet20', dynamo=False)."""
    from models.export import export_onnx, build, randomize_batchnorm

    cache = {}
    folder = tmp_path_factory.mktemp("models")

    def get(name: str, dynamo: bool = False):
        key = (name, dynamo)
        if key not in cache:
            sub = folder / f"{name}_{'dynamo' if dynamo else 'legacy'}"
            sub.mkdir()
            cache[key] = export_onnx(randomize_batchnorm(build(name)), sub / "model.onnx", dynamo=dynamo)
        return cache[key]

    return get
