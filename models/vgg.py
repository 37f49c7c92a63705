"""VGG-16 with batch norm, CIFAR-10 variant (32x32 inputs, 512-512-10 classifier).

13 3x3 convs (no bias: BN follows), 5 max-pools bring 32x32 down to 1x1, so the classifier sees
512 features. About 14.99M trainable parameters and 314M multiply-accumulates.
"""

from __future__ import annotations

from torch import nn

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, cfg=VGG16_CFG, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [
                    nn.Conv2d(in_channels, item, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def vgg16(num_classes: int = 10) -> VGG:
    return VGG(VGG16_CFG, num_classes)
