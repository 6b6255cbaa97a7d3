"""CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), §4.2.

``depth = 6n + 2``: a 3x3 stem convolution, three stages of ``n`` basic blocks each (widths
16, 32, 64 for the standard ``width=16``; the first block of stages 2 and 3 halves the spatial
size with stride 2), global average pooling and a linear classifier.

The paper's CIFAR models use zero-padding identity shortcuts (option A); here every shortcut
that changes shape is a 1x1 strided convolution + BN (option B), the rest are identities. That
keeps the graph made of ordinary layers, which is what a channel pruner wants, and adds
2,752 parameters to every depth (for ``width=16``, 10 classes).

Module names follow the usual convention (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ..., ``fc``), and the models are ``torch.fx``-traceable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``downsample`` is ``Sequential(1x1 conv, BN)`` when the stride or the channel count
    changes (option B), else ``None`` (identity shortcut).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with ``blocks_per_stage`` basic blocks in each of 3 stages.

    Args:
        blocks_per_stage: ``n`` (depth ``6n + 2``).
        num_classes: size of the classifier output.
        width: channels of the stem and stage 1; stages 2 and 3 use ``2*width`` and ``4*width``.
        in_channels: input channels.
        zero_init_residual: start each block's last BN with ``gamma = 0`` (the block begins as
            its shortcut), a common trick for large batches; off by default as in the paper.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        width: int = 16,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.depth = 6 * blocks_per_stage + 2
        widths = (width, 2 * width, 4 * width)
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self._in_planes = widths[0]
        self.layer1 = self._make_stage(widths[0], blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(widths[1], blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(widths[2], blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        del self._in_planes
        self.reset_parameters(zero_init_residual=zero_init_residual)

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(BasicBlock(self._in_planes, planes, stride if i == 0 else 1))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """Kaiming-normal convolutions (fan-out, ReLU gain), BN ``gamma=1, beta=0``,
        Kaiming-uniform classifier weights with a zero bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    width: int = 16,
    *,
    in_channels: int = 3,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """A CIFAR ResNet of the given ``depth`` (``6n + 2``: 20, 32, 44, 56, 110, ...)."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}"
        )
    return CifarResNet(
        (depth - 2) // 6,
        num_classes=num_classes,
        width=width,
        in_channels=in_channels,
        zero_init_residual=zero_init_residual,
    )


def resnet20(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage)."""
    return cifar_resnet(20, num_classes, width)


def resnet32(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage)."""
    return cifar_resnet(32, num_classes, width)


def resnet44(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-44 for CIFAR (7 blocks per stage)."""
    return cifar_resnet(44, num_classes, width)


def resnet56(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage)."""
    return cifar_resnet(56, num_classes, width)


def resnet110(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-110 for CIFAR (18 blocks per stage)."""
    return cifar_resnet(110, num_classes, width)
