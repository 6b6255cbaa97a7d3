"""VGG (Simonyan & Zisserman, 2015) with batch norm, torchvision layout.

conv-bn-relu stacks separated by max-pools, an adaptive average pool to a
fixed spatial size, ``torch.flatten(x, 1)`` of the C x H x W map (H, W > 1, so
each conv channel feeds several Linear inputs) and a dropout MLP classifier.
"""
from __future__ import annotations

from typing import List, Union

import torch
from torch import nn

from ._common import images, zoo_factory

# Numbers are conv widths, "M" is a 2x2 max-pool (a shrunken "VGG-11" config).
SMALL_CFG: List[Union[int, str]] = [8, "M", 16, "M", 32, 32, "M"]


def make_features(cfg: List[Union[int, str]], in_channels: int = 3) -> nn.Sequential:
    layers: List[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [
                nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1),
                nn.BatchNorm2d(int(v)),
                nn.ReLU(inplace=True),
            ]
            in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, cfg=SMALL_CFG, num_classes: int = 10, pool_size: int = 4, hidden: int = 64):
        super().__init__()
        self.features = make_features(cfg)
        last = [v for v in cfg if v != "M"][-1]
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(int(last) * pool_size * pool_size, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


ENTRIES = {
    "vgg": zoo_factory(VGG, images(32)),
}
