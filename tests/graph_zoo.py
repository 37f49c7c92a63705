"""Small graphs, one per pattern the channel analysis must understand, exported from torch.

Each entry builds a module and an input shape; `export` writes it with the legacy exporter
(BN nodes kept) or the dynamo exporter. BN statistics are randomised so that no channel is
accidentally dead and folding cannot hide a wrong slice.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


def _bn(c):
    return nn.BatchNorm2d(c)


class ResidualStack(nn.Module):
    """Two identity blocks then a projection block: the stem and the first two blocks share one group."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = _bn(8)
        self.blocks = nn.ModuleList([self._block(8, 8) for _ in range(2)])
        self.proj_conv1, self.proj_bn1 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), _bn(16)
        self.proj_conv2, self.proj_bn2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False), _bn(16)
        self.short, self.short_bn = nn.Conv2d(8, 16, 1, 2, bias=False), _bn(16)
        self.fc = nn.Linear(16, 10)

    @staticmethod
    def _block(cin, cout):
        return nn.ModuleList([nn.Conv2d(cin, cout, 3, 1, 1, bias=False), _bn(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _bn(cout)])

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        for c1, b1, c2, b2 in self.blocks:
            x = F.relu(x + b2(c2(F.relu(b1(c1(x))))))
        y = self.proj_bn2(self.proj_conv2(F.relu(self.proj_bn1(self.proj_conv1(x)))))
        x = F.relu(y + self.short_bn(self.short(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseConcat(nn.Module):
    """DenseNet-style: every layer reads the concat of all earlier outputs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.l1 = nn.Sequential(_bn(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
        self.l2 = nn.Sequential(_bn(10), nn.ReLU(), nn.Conv2d(10, 4, 3, padding=1))
        self.head = nn.Conv2d(14, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        return self.head(x).mean((2, 3))


class DepthwiseStack(nn.Module):
    """MobileNet-style: pointwise expand, depthwise 3x3, ReLU6 (Clip), pointwise project, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), _bn(24), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), _bn(24), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), _bn(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.head(x).amax((2, 3))


class GroupedConv(nn.Module):
    """A grouped conv between plain ones: each of its groups must lose the same positions."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.c3 = nn.Conv2d(12, 6, 1)

    def forward(self, x):
        return self.c3(F.relu(self.g(F.relu(self.c1(x))))).mean((2, 3))


class SqueezeExcite(nn.Module):
    """GlobalAveragePool -> 1x1 reduce -> ReLU -> 1x1 expand -> HardSigmoid gate -> Mul."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _bn(16), nn.Hardswish())
        self.reduce = nn.Conv2d(16, 4, 1)
        self.expand = nn.Conv2d(4, 16, 1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        x = self.c1(x)
        gate = F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return self.c2(x * gate).mean((2, 3))


class FlattenClassifier(nn.Module):
    """Conv features flattened (each channel owns H*W features) into a two-layer classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(12 * 2 * 2, 32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(torch.flatten(self.features(x), 1)))))


class UNetDecoder(nn.Module):
    """Encoder, ConvTranspose and nearest Resize up-paths, skip concat."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.up_t = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.up_r = nn.Conv2d(16, 4, 1)
        self.dec = nn.Sequential(nn.Conv2d(8 + 8 + 4, 8, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        up_r = F.interpolate(self.up_r(e2), scale_factor=2.0, mode="nearest")
        return self.out(self.dec(torch.cat([e1, self.up_t(e2), up_r], 1)))


class ChannelSplit(nn.Module):
    """Split into sized parts and a Slice of the channel axis, each through its own conv."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU())
        self.a = nn.Conv2d(4, 6, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 6, 1)
        self.head = nn.Conv2d(18, 4, 1)

    def forward(self, x):
        x = self.c1(x)
        a, b = torch.split(x, [4, 8], dim=1)
        s = x[:, 3:9]
        return self.head(torch.cat([self.a(a), self.b(b), self.c(s)], 1)).mean((2, 3))


class ActivationsAndConstants(nn.Module):
    """PReLU per channel, SiLU (x * sigmoid x), a per-channel scale constant, LeakyReLU, Tanh, ELU."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.prelu = nn.PReLU(8)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(8, 1, 1))
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.prelu(self.c1(x))
        x = F.silu(x) * self.scale + self.shift
        x = torch.tanh(F.leaky_relu(self.c2(x), 0.1))
        return self.c3(F.elu(x)).mean((2, 3))


class ChannelsLastMatMul(nn.Module):
    """Transpose to NHWC, then Linear on the last axis (MatMul with a constant weight, then Add)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.lin = nn.Linear(8, 12)
        self.lin2 = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.c1(x)).permute(0, 2, 3, 1)
        return self.lin2(F.gelu(self.lin(x))).mean((1, 2))


class UnknownOpInside(nn.Module):
    """LocalResponseNorm couples neighbouring channels: not in the table, so a boundary."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(3)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.lrn(F.relu(self.c1(x)))
        return self.c3(F.relu(self.c2(x))).mean((2, 3))


class PaddedShortcut(nn.Module):
    """CIFAR ResNet option A: the shortcut subsamples and zero-pads the channel axis."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), _bn(8))
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = self.c1(x)
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        return self.head(F.relu(self.c2(x) + short)).mean((2, 3))


ZOO = {
    "residual": (ResidualStack, (1, 3, 8, 8)),
    "dense_concat": (DenseConcat, (1, 3, 8, 8)),
    "depthwise": (DepthwiseStack, (1, 3, 8, 8)),
    "grouped": (GroupedConv, (1, 3, 8, 8)),
    "squeeze_excite": (SqueezeExcite, (1, 3, 8, 8)),
    "flatten_classifier": (FlattenClassifier, (1, 3, 8, 8)),
    "unet": (UNetDecoder, (1, 3, 8, 8)),
    "channel_split": (ChannelSplit, (1, 3, 8, 8)),
    "activations": (ActivationsAndConstants, (1, 3, 8, 8)),
    "channels_last_matmul": (ChannelsLastMatMul, (1, 3, 6, 6)),
    "unknown_op": (UnknownOpInside, (1, 3, 8, 8)),
    "padded_shortcut": (PaddedShortcut, (1, 3, 8, 8)),
}


class NHWCInput(nn.Module):
    """A channels-last graph input (TensorFlow style): the graph transposes it to NCHW first."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.c2(self.c1(x.permute(0, 3, 1, 2)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TwoHeads(nn.Module):
    """A shared trunk and two heads, two graph outputs: class scores and a dense box map."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8), nn.ReLU(),
                                   nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.scores = nn.Conv2d(16, 4, 1)
        self.boxes = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x):
        x = self.trunk(x)
        return self.scores(x).mean((2, 3)), torch.sigmoid(self.boxes(x))


# Variants of the zoo's patterns in how a graph meets the world: name -> (module, input shape,
# output names, whether the batch dim is symbolic).
VARIANTS = {
    "nhwc_input": (NHWCInput, (1, 8, 8, 3), ["out"], False),
    "two_heads": (TwoHeads, (1, 3, 8, 8), ["scores", "boxes"], False),
    "dynamic_batch": (ResidualStack, (2, 3, 8, 8), ["out"], True),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = (ZOO[name][0] if name in ZOO else VARIANTS[name][0])().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return module


def input_shape(name: str) -> tuple[int, ...]:
    return ZOO[name][1] if name in ZOO else VARIANTS[name][1]


def export(name: str, path, dynamo: bool = False, seed: int = 0):
    """Write zoo pattern or variant `name` with one exporter; a variant's batch dim may be symbolic."""
    module = build(name, seed)
    sample = torch.randn(*input_shape(name))
    outputs, symbolic = (["out"], False) if name in ZOO else VARIANTS[name][2:]
    dynamic = {n: {0: "batch"} for n in ["input", *outputs]} if symbolic else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (sample,), str(path), input_names=["input"], output_names=outputs, dynamo=True,
                              verbose=False, dynamic_axes=dynamic)
        else:
            torch.onnx.export(module, (sample,), str(path), input_names=["input"], output_names=outputs,
                              opset_version=17, do_constant_folding=False, dynamo=False, dynamic_axes=dynamic)
    return path
