"""Mobile architectures built from inverted residuals (torchvision-style code).

* MobileNetV2: Sandler et al., 2018 - 1x1 expand + ReLU6, depthwise 3x3,
  linear 1x1 projection, residual when stride 1 and in == out.
* MobileNetV3: Howard et al., 2019 - same block plus squeeze-excitation
  (``x * self.se(x)`` with a Hardsigmoid gate) and Hardswish activations.
* EfficientNet: Tan & Le, 2019 - MBConv with SiLU, SE gating written as
  ``x * torch.sigmoid(s)`` and stochastic depth on the residual branch.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._common import images, zoo_factory


def _make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (never more than 10% down)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormActivation(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation_layer: Optional[Callable[..., nn.Module]] = nn.ReLU6):
        padding = (kernel_size - 1) // 2
        layers: List[nn.Module] = [
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_planes


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidualV2(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup

        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden_dim, kernel_size=1))
        layers.extend([
            ConvNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    # t (expansion), c (out channels), n (repeats), s (first stride)
    SETTINGS = [[1, 8, 1, 1], [6, 12, 2, 2], [6, 16, 2, 2], [6, 24, 1, 1]]

    def __init__(self, num_classes: int = 10, input_channel: int = 16, last_channel: int = 64,
                 settings=None, stem_stride: int = 2):
        super().__init__()
        features: List[nn.Module] = [ConvNormActivation(3, input_channel, stride=stem_stride)]
        for t, c, n, s in self.SETTINGS if settings is None else settings:
            for i in range(n):
                features.append(InvertedResidualV2(input_channel, c, s if i == 0 else 1, expand_ratio=t))
                input_channel = c
        features.append(ConvNormActivation(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


# --------------------------------------------------------------------------- MobileNetV3


class SqueezeExcitation(nn.Module):
    """SE with a Hardsigmoid gate: pool -> 1x1 reduce -> ReLU -> 1x1 expand -> Hardsigmoid."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeeze_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeeze_channels, channels, 1),
            nn.Hardsigmoid(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.se(x)


class InvertedResidualV3(nn.Module):
    def __init__(self, inp: int, kernel: int, expanded: int, out: int, use_se: bool, activation: str, stride: int):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers: List[nn.Module] = []
        if expanded != inp:
            layers.append(ConvNormActivation(inp, expanded, kernel_size=1, activation_layer=act))
        layers.append(ConvNormActivation(expanded, expanded, kernel_size=kernel, stride=stride, groups=expanded,
                                         activation_layer=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8)))
        layers.append(ConvNormActivation(expanded, out, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3(nn.Module):
    # in, kernel, expanded, out, use_se, activation, stride
    SETTINGS = [
        (16, 3, 16, 16, True, "RE", 2),
        (16, 3, 48, 24, False, "RE", 2),
        (24, 3, 72, 24, False, "RE", 1),
        (24, 5, 96, 40, True, "HS", 2),
        (40, 5, 120, 40, True, "HS", 1),
    ]

    def __init__(self, num_classes: int = 10, last_channel: int = 128):
        super().__init__()
        layers: List[nn.Module] = [ConvNormActivation(3, 16, stride=2, activation_layer=nn.Hardswish)]
        for cfg in self.SETTINGS:
            layers.append(InvertedResidualV3(*cfg))
        last_in = self.SETTINGS[-1][3]
        last_conv = 6 * last_in
        layers.append(ConvNormActivation(last_in, last_conv, kernel_size=1, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=0.2, inplace=True),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


# --------------------------------------------------------------------------- EfficientNet


class StochasticDepth(nn.Module):
    """Row-wise stochastic depth; identity in eval mode (branch on self.training is trace-time static)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival_rate = 1.0 - self.p
        keep_mask = torch.empty([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device).bernoulli_(survival_rate)
        return x * keep_mask / survival_rate


class SqueezeExcitationSigmoid(nn.Module):
    """EfficientNet SE: reduce/expand 1x1 convs with SiLU, gate written as ``x * torch.sigmoid(s)``."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.avgpool(x)
        s = self.fc1(s)
        s = self.act(s)
        s = self.fc2(s)
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    def __init__(self, expand_ratio: int, kernel: int, stride: int, inp: int, out: int, stochastic_depth_prob: float):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        expanded = _make_divisible(inp * expand_ratio, 8)
        layers: List[nn.Module] = []
        if expanded != inp:
            layers.append(ConvNormActivation(inp, expanded, kernel_size=1, activation_layer=nn.SiLU))
        layers.append(ConvNormActivation(expanded, expanded, kernel_size=kernel, stride=stride, groups=expanded,
                                         activation_layer=nn.SiLU))
        layers.append(SqueezeExcitationSigmoid(expanded, max(1, inp // 4)))
        layers.append(ConvNormActivation(expanded, out, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


class EfficientNet(nn.Module):
    # expand_ratio, kernel, stride, in, out, num_layers
    SETTINGS = [
        (1, 3, 1, 16, 8, 1),
        (6, 3, 2, 8, 12, 2),
        (6, 5, 2, 12, 20, 2),
        (6, 3, 1, 20, 24, 1),
    ]

    def __init__(self, num_classes: int = 10, stochastic_depth_prob: float = 0.2, head_channels: int = 96):
        super().__init__()
        layers: List[nn.Module] = [ConvNormActivation(3, 16, stride=2, activation_layer=nn.SiLU)]
        total_blocks = sum(cfg[-1] for cfg in self.SETTINGS)
        block_id = 0
        for expand_ratio, kernel, stride, inp, out, num_layers in self.SETTINGS:
            stage: List[nn.Module] = []
            for i in range(num_layers):
                sd_prob = stochastic_depth_prob * block_id / total_blocks
                stage.append(MBConv(expand_ratio, kernel, stride if i == 0 else 1, inp if i == 0 else out, out, sd_prob))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last_out = self.SETTINGS[-1][4]
        layers.append(ConvNormActivation(last_out, head_channels, kernel_size=1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(head_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


ENTRIES = {
    "mobilenetv2": zoo_factory(MobileNetV2, images(32)),
    "mobilenetv3": zoo_factory(MobileNetV3, images(32)),
    "efficientnet": zoo_factory(EfficientNet, images(32)),
}
