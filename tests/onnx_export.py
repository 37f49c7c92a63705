"""One way for tests to write a small torch module as ONNX: the legacy exporter at opset 17 with
BatchNormalization nodes kept (no constant folding), warnings silenced."""

from __future__ import annotations

import warnings

import torch


def export_legacy(module: torch.nn.Module, path, input_shape, *, output_names=("logits",), opset: int = 17):
    """Write `module` (in eval mode) for an input of `input_shape` named "input"; returns `path`."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*input_shape),), str(path), input_names=["input"],
                          output_names=list(output_names), opset_version=opset, do_constant_folding=False, dynamo=False)
    return path
