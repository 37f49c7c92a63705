"""MobileNetV2 for CIFAR-10 (kuangliu/pytorch-cifar stride pattern).

Against the ImageNet network: the stem conv has stride 1 and the (6, 24, 2) stage has stride 1,
so 32x32 inputs reach the last stages at 4x4. Depthwise convs use groups = channels; a block adds
its input back when its stride is 1 and its width does not change (no 1x1 conv shortcut otherwise,
unlike kuangliu's). Activations are ReLU6 as in the paper (Clip in ONNX). ~2.24M parameters.
"""

from __future__ import annotations

from torch import nn

# (expansion, out_channels, blocks, stride of the first block)
CIFAR_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, with BN after each."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv1 = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU6(inplace=True)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6(inplace=True)
        self.conv3 = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, stages=CIFAR_STAGES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU6(inplace=True)
        blocks = []
        in_channels = 32
        for expansion, out_channels, count, stride in stages:
            for index in range(count):
                blocks.append(InvertedResidual(in_channels, out_channels, expansion, stride if index == 0 else 1))
                in_channels = out_channels
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_channels, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.relu2 = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.linear(self.flatten(self.pool(out)))


def mobilenetv2(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(num_classes)
