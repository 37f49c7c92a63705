"""Build the models of models/ by name and export them to ONNX.

`export_onnx` writes input "input" [batch, 3, 32, 32] float32 (or the model's own `input_shape`:
224x224 for the models of IMAGENET_REGISTRY) and output "logits", in eval mode.
- dynamo=False (default): torch's legacy TorchScript exporter with do_constant_folding=False, so
  BatchNormalization nodes stay (constant folding would fold them into the convs).
- dynamo=True: torch's default dynamo exporter, at its own default opset (20+ in torch 2.13) when
  `opset` < 18 (it cannot go lower), else at `opset`. It writes Reshape with allowzero=1 and may
  store large weights in an external "<path>.data" file beside the model; acc's import takes
  such graphs. Its graph optimiser also folds eval-mode BatchNormalization into the convs.

The legacy exporter merges initializers whose values are equal: in a freshly initialised model
every BN gamma is ones and every beta zeros, so they come out as one shared tensor read through
Identity nodes. `randomize_batchnorm` gives each BN its own values first, as training would.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from models.mobilenetv2 import mobilenetv2
from models.resnet_cifar import resnet18, resnet20, resnet56
from models.resnet_imagenet import resnet18_imagenet
from models.small224 import small224
from models.vgg import vgg16
from models.vit import vit

REGISTRY = {
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenetv2": mobilenetv2,
}

INPUT_SHAPE = (3, 32, 32)

# Models for 224x224 inputs: name -> (factory, default number of classes). Kept apart from REGISTRY,
# whose models are the CIFAR ones (tests/test_models.py checks each against its published counts at
# 32x32); `build` and `export_onnx` take both.
IMAGENET_REGISTRY = {
    "resnet18_imagenet": (resnet18_imagenet, 1000),
    "small224": (small224, 10),
}
IMAGENET_INPUT_SHAPE = (3, 224, 224)

# CIFAR-sized transformers, kept apart from REGISTRY (whose models tests/test_models.py checks against
# published CNN counts); `build` and models/train_cifar.py take them.
TRANSFORMER_REGISTRY = {
    "vit": vit,
}


def build(name: str, num_classes: int | None = None) -> nn.Module:
    """A model by name; num_classes defaults to 10 (CIFAR models) or the model's own (1000 for
    resnet18_imagenet)."""
    if name in REGISTRY:
        return REGISTRY[name](num_classes=10 if num_classes is None else num_classes)
    if name in IMAGENET_REGISTRY:
        factory, default = IMAGENET_REGISTRY[name]
        return factory(num_classes=default if num_classes is None else num_classes)
    if name in TRANSFORMER_REGISTRY:
        return TRANSFORMER_REGISTRY[name](num_classes=10 if num_classes is None else num_classes)
    known = sorted(REGISTRY) + sorted(IMAGENET_REGISTRY) + sorted(TRANSFORMER_REGISTRY)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(known)}")


def input_shape_of(name: str) -> tuple[int, int, int]:
    """(channels, height, width) a registered model is exported with."""
    return IMAGENET_INPUT_SHAPE if name in IMAGENET_REGISTRY else INPUT_SHAPE


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm distinct, trained-looking affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                shape = module.num_features
                module.weight.copy_(1.0 + 0.2 * torch.randn(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
    return model


def export_onnx(
    model_name_or_module: str | nn.Module,
    path: str | os.PathLike,
    *,
    dynamo: bool = False,
    opset: int = 17,
    batch: int = 1,
    input_shape: tuple[int, int, int] | None = None,
) -> Path:
    """Export a model (by registry name or as a module) in eval mode; returns the written path.

    `input_shape` (channels, height, width) fixes the input: by default 3x32x32, or 3x224x224 for
    a model named from IMAGENET_REGISTRY."""
    if isinstance(model_name_or_module, str):
        model = build(model_name_or_module)
        input_shape = input_shape or input_shape_of(model_name_or_module)
    else:
        model = model_name_or_module
    was_training = model.training
    model.eval()
    sample = torch.randn(batch, *(input_shape or INPUT_SHAPE))
    path = Path(path)
    try:
        # The legacy exporter is deprecated but is the one that keeps BN nodes: silence the notice.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if dynamo:
                # Below 18 the dynamo exporter tries a down-conversion that fails on Reduce ops and
                # logs a traceback; its own default opset is what it supports, so use that.
                options = {"opset_version": opset if opset >= 18 else None, "dynamo": True, "verbose": False}
            else:
                options = {"opset_version": opset, "do_constant_folding": False, "dynamo": False}
            torch.onnx.export(model, (sample,), str(path), input_names=["input"], output_names=["logits"], **options)
    finally:
        model.train(was_training)
    return path
