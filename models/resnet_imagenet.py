"""ImageNet-style ResNet-18 (He et al. 2016, table 1) for 224x224 inputs.

7x7 stride-2 stem conv with 64 channels, BN, ReLU, 3x3 stride-2 max pool, BasicBlocks [2, 2, 2, 2]
at 64/128/256/512 channels (the first stage at stride 1, the others at 2), 1x1 conv + BN
projection shortcuts where the shape changes (option B, as torchvision), global average pool,
Linear 512 -> num_classes. With 1000 classes: 11.69M parameters, ~1.81G multiply-accumulates per
224x224 image (torchvision's resnet18 has the same counts). The blocks are models.resnet_cifar's.
"""

from __future__ import annotations

from torch import nn

from models.resnet_cifar import residual_stages


class ImageNetResNet(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512), blocks_per_stage=(2, 2, 2, 2), num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layers, in_channels = residual_stages(widths, blocks_per_stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layers(out)
        return self.fc(self.flatten(self.pool(out)))


def resnet18_imagenet(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes)
