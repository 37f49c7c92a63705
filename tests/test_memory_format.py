"""Channels-last training: chosen by timing, the same values in another memory layout."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from acc.passes.importer import import_model
from acc.prune.bridge import TorchModel
from acc.prune.memory_format import as_layout, channels_last_is_faster, to_channels_last


def test_the_layout_changes_memory_not_parameters_or_results(model_path):
    bridge = TorchModel(import_model(model_path("resnet20")))
    module = bridge.module.train()
    reference = copy.deepcopy(module)
    name = next(n for n in bridge.tensors if bridge.tensors[n].dim() == 4)
    before = bridge.tensors[name]
    to_channels_last(module)
    # The same Parameter objects: views, masks and optimizers made before still reach them.
    assert bridge.tensors[name] is before and before.is_contiguous(memory_format=torch.channels_last)
    # The same function, and the same training up to float noise (this random-BatchNorm net's
    # gradients are ill-conditioned: both layouts are ~1e-3 off a float64 reference in places).
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.testing.assert_close(module(as_layout(x, True)), reference(x), rtol=1e-4, atol=1e-4)
    losses = {}
    for net, channels_last in ((reference, False), (module, True)):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        losses[channels_last] = []
        for _ in range(3):
            loss = nn.functional.cross_entropy(net(as_layout(x, channels_last)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[channels_last].append(float(loss))
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
    assert losses[True][-1] < losses[True][0]  # it did train


def test_only_conv_nets_on_the_cpu_are_timed():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    assert channels_last_is_faster(mlp, torch.randn(4, 3, 2, 2), "cpu") is False  # no 4-D weight
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    assert channels_last_is_faster(conv, torch.randn(4, 3, 8, 8), "meta") is False  # not the CPU
    assert channels_last_is_faster(conv, torch.randn(4, 3), "cpu") is False  # not images
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    assert channels_last_is_faster(conv, torch.randn(4, 3, 8, 8), "cpu") in (True, False)
    # Timed on a copy: the model itself is untouched, in its layout and its gradients.
    assert all(torch.equal(before[k], v) for k, v in conv.state_dict().items())
    assert conv[0].weight.is_contiguous() and conv[0].weight.grad is None
