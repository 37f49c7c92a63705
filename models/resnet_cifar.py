"""CIFAR-10 ResNets.

- ResNet-18 (kuangliu/pytorch-cifar style): 3x3 stem with 64 channels, BasicBlocks [2, 2, 2, 2]
  at 64/128/256/512 channels, 1x1 conv + BN projection shortcuts where the shape changes, global
  average pool, Linear 512 -> 10. 11.17M parameters, ~557M multiply-accumulates.
- ResNet-20 / ResNet-56 (He et al. 2016, section 4.2): 3 stages of n = 3 / 9 BasicBlocks at
  16/32/64 channels. Where the shape changes the shortcut is a 1x1 conv + BN projection
  (option B), not the paper's zero-padding identity (option A), so that every tensor of the graph
  is a plain conv output the channel analysis can follow. This adds ~3K parameters: ResNet-20
  has ~0.27M, ResNet-56 ~0.86M.
"""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def residual_stages(widths, blocks_per_stage) -> tuple[nn.Sequential, int]:
    """One stage of BasicBlocks per entry of `widths` (the first at stride 1, the rest at 2), and
    the width they end at."""
    stages = []
    in_channels = widths[0]
    for index, (width, count) in enumerate(zip(widths, blocks_per_stage)):
        first_stride = 1 if index == 0 else 2
        blocks = []
        for block_index in range(count):
            blocks.append(BasicBlock(in_channels, width, first_stride if block_index == 0 else 1))
            in_channels = width
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), in_channels


class CifarResNet(nn.Module):
    """Stem conv, then one stage per entry of `widths` (the first at stride 1, the rest at 2)."""

    def __init__(self, widths, blocks_per_stage, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layers, in_channels = residual_stages(widths, blocks_per_stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(self.flatten(self.pool(out)))


def resnet18(num_classes: int = 10) -> CifarResNet:
    return CifarResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes)


def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet((16, 32, 64), (3, 3, 3), num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet((16, 32, 64), (9, 9, 9), num_classes)
