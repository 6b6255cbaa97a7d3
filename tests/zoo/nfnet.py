"""NF-ResNet / NFNet (Brock et al. 2021) in the coding style of timm's ``nfnet.py`` and
``std_conv.py``: no normalization layers.

* ``ScaledStdConv2d``: an ``nn.Conv2d`` subclass that standardizes its weight in ``forward``
  (``F.batch_norm`` over each filter's fan-in, the gain as the affine weight) and calls
  ``F.conv2d`` with it; ``self.scale`` (``gamma / sqrt(fan_in)``) is a float fixed at init;
* activations scaled by a constant (``GammaAct``: ``act(x).mul_(gamma)``);
* pre-activation residual blocks: ``act1(x) * beta`` into the branch (and the projection
  shortcut), ``out * alpha + shortcut`` out of it, with a learned skip gain
  (``out.mul_(self.skipinit_gain)``) and the expected-variance bookkeeping of ``beta``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import images, zoo_factory

_GAMMA_RELU = 1.7139588594436646  # timm's _nonlin_gamma["relu"]


class ScaledStdConv2d(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True, gamma: float = 1.0, eps: float = 1e-6, gain_init: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                         groups=groups, bias=bias)
        self.gain = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), gain_init))
        self.scale = gamma * self.weight[0].numel() ** -0.5
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None,
            weight=(self.gain * self.scale).view(-1),
            training=True, momentum=0., eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class GammaAct(nn.Module):
    def __init__(self, gamma: float = _GAMMA_RELU, inplace: bool = False):
        super().__init__()
        self.gamma = gamma
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=self.inplace).mul_(self.gamma)


class DownsampleAvg(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        self.conv = ScaledStdConv2d(in_chs, out_chs, 1, gamma=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class NormFreeBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, alpha: float = 0.2, beta: float = 1.0,
                 bottle_ratio: float = 0.5):
        super().__init__()
        mid_chs = int(out_chs * bottle_ratio)
        self.alpha = alpha
        self.beta = beta
        self.downsample = DownsampleAvg(in_chs, out_chs, stride) if in_chs != out_chs or stride != 1 else None
        self.act1 = GammaAct()
        self.conv1 = ScaledStdConv2d(in_chs, mid_chs, 1, gamma=_GAMMA_RELU)
        self.act2 = GammaAct(inplace=True)
        self.conv2 = ScaledStdConv2d(mid_chs, mid_chs, 3, stride=stride, gamma=_GAMMA_RELU)
        self.act3 = GammaAct()
        self.conv3 = ScaledStdConv2d(mid_chs, out_chs, 1, gamma=_GAMMA_RELU)
        self.skipinit_gain = nn.Parameter(torch.tensor(0.5))  # timm starts it at 0; as if trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(x) * self.beta
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.act2(out))
        out = self.conv3(self.act3(out))
        out.mul_(self.skipinit_gain)
        return out * self.alpha + shortcut


class NfNet(nn.Module):
    """A stem of three standardized convs, two stages of two blocks, a final conv and a head."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int] = (32, 64), alpha: float = 0.2):
        super().__init__()
        self.stem = nn.Sequential(ScaledStdConv2d(3, 8, 3, stride=2), GammaAct(),
                                  ScaledStdConv2d(8, 16, 3, gamma=_GAMMA_RELU), GammaAct(),
                                  ScaledStdConv2d(16, 16, 3, stride=2, gamma=_GAMMA_RELU))
        blocks, in_chs, expected_var = [], 16, 1.0
        for stage, width in enumerate(widths):
            for index in range(2):
                beta = 1.0 / expected_var ** 0.5
                blocks.append(NormFreeBlock(in_chs, width, stride=2 if stage and not index else 1, alpha=alpha,
                                            beta=beta))
                expected_var = 1.0 + alpha ** 2 if in_chs != width else expected_var + alpha ** 2
                in_chs = width
        self.stages = nn.Sequential(*blocks)
        self.final_conv = ScaledStdConv2d(in_chs, 96, 1, gamma=_GAMMA_RELU)
        self.final_act = GammaAct()
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_act(self.final_conv(self.stages(self.stem(x))))
        return self.fc(x.mean((2, 3)))


ENTRIES = {"nfnet": zoo_factory(NfNet, images(32))}
