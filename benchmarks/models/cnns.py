"""ResNet-50, DenseNet-121, EfficientNet-B0, MobileNetV3-Large and RegNetY-400MF at full size.

Blocks come from the test zoo (torchvision's structure); only the stage layouts differ.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.densenet import DenseBlockList, Transition
from tests.zoo.mobile import ConvNormActivation, EfficientNet, InvertedResidualV3, MobileNetV3
from tests.zoo.resnets import Bottleneck, ResNet


class ResNet4(ResNet):
    """torchvision's four-stage ResNet (the zoo's ResNet plus ``layer4``)."""

    def __init__(self, layers: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512), num_classes: int = 1000):
        super().__init__(Bottleneck, layers[:3], widths[:3], num_classes)
        self.layer4 = self._make_layer(Bottleneck, widths[3], layers[3], stride=2)
        self.fc = nn.Linear(widths[3] * Bottleneck.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet50() -> nn.Module:
    return ResNet4((3, 4, 6, 3))


class DenseNet(nn.Module):
    """torchvision's DenseNet-BC: every dense block re-concatenates its whole feature list."""

    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlockList(num_layers, num_features, bn_size, growth_rate))
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


def densenet121() -> nn.Module:
    return DenseNet()


class EfficientNetB0(EfficientNet):
    # expand_ratio, kernel, stride, in, out, num_layers
    SETTINGS = [
        (1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1),
    ]

    def __init__(self, num_classes: int = 1000):
        super().__init__(num_classes=num_classes, head_channels=1280)
        # the zoo's stem is 16 wide; B0's is 32
        self.features[0] = ConvNormActivation(3, 32, stride=2, activation_layer=nn.SiLU)


def efficientnet_b0() -> nn.Module:
    return EfficientNetB0()


class MobileNetV3Large(MobileNetV3):
    # in, kernel, expanded, out, use_se, activation, stride
    SETTINGS = [
        (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
        (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
        (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
    ]

    def __init__(self, num_classes: int = 1000):
        super().__init__(num_classes=num_classes, last_channel=1280)


def mobilenet_v3_large() -> nn.Module:
    return MobileNetV3Large()


class SqueezeExcitation(nn.Module):
    """torchvision's SE: pool, 1x1 reduce, ReLU, 1x1 expand, sigmoid scale."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)


class ResBottleneckBlock(nn.Module):
    """RegNet's X/Y block: 1x1, grouped 3x3 (fixed group width), SE, 1x1, plus the shortcut."""

    def __init__(self, width_in: int, width_out: int, stride: int, group_width: int, se_ratio: float):
        super().__init__()
        groups = width_out // group_width
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = ConvNormActivation(width_in, width_out, kernel_size=1, stride=stride, activation_layer=None)
        self.f = nn.Sequential(
            ConvNormActivation(width_in, width_out, kernel_size=1, activation_layer=nn.ReLU),
            ConvNormActivation(width_out, width_out, stride=stride, groups=groups, activation_layer=nn.ReLU),
            SqueezeExcitation(width_out, int(round(se_ratio * width_in))),
            ConvNormActivation(width_out, width_out, kernel_size=1, activation_layer=None),
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.proj(x) if self.proj is not None else x
        return self.activation(shortcut + self.f(x))


class RegNet(nn.Module):
    def __init__(self, depths: Sequence[int], widths: Sequence[int], group_width: int, se_ratio: float,
                 stem_width: int = 32, num_classes: int = 1000):
        super().__init__()
        self.stem = ConvNormActivation(3, stem_width, stride=2, activation_layer=nn.ReLU)
        stages: List[nn.Module] = []
        width_in = stem_width
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = [ResBottleneckBlock(width_in if j == 0 else width, width, 2 if j == 0 else 1, group_width, se_ratio)
                      for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            width_in = width
        self.trunk_output = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk_output(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def regnet_y_400mf() -> nn.Module:
    return RegNet(depths=(1, 3, 6, 6), widths=(48, 104, 208, 440), group_width=8, se_ratio=0.25)
