"""A small CNN for 224x224 inputs, cheap enough that training it is dominated by JPEG decoding.

conv 3->16 k3 s4, BN, ReLU; conv 16->32 k3 s2, BN, ReLU; conv 32->64 k3 s2, BN, ReLU; global
average pool; Linear 64 -> num_classes. About 24K parameters and ~8.6M multiply-accumulates per
224x224 image (ResNet-18 at 224 does ~200x more). benchmarks/scale.py uses it to measure the
memory of `acc prune` streaming an image folder.
"""

from __future__ import annotations

from torch import nn


def _stage(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class Small224(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(*_stage(3, 16, 4), *_stage(16, 32, 2), *_stage(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


def small224(num_classes: int = 10) -> Small224:
    return Small224(num_classes)
