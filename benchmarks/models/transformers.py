"""ConvNeXt-Tiny, ViT-B/16 and Swin-T at full size, from the test zoo's blocks."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from tests.zoo.convnext import ConvNeXt
from tests.zoo.swin import PatchEmbed, PatchMerging, SwinTransformerBlock
from tests.zoo.vit import VisionTransformer


def convnext_tiny() -> nn.Module:
    return ConvNeXt(num_classes=1000, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))


def vit_b_16() -> nn.Module:
    return VisionTransformer(img_size=224, patch_size=16, num_classes=1000, embed_dim=768, depth=12, num_heads=12)


class SwinTransformer(nn.Module):
    """Swin's four stages: shifted-window blocks, a patch merging between stages."""

    def __init__(self, img_size: int = 224, patch_size: int = 4, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, num_classes: int = 1000):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        res, dim = img_size // patch_size, embed_dim
        layers = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            for j in range(depth):
                shift = 0 if j % 2 == 0 else window_size // 2
                layers.append(SwinTransformerBlock(dim, (res, res), heads, window_size, shift_size=shift))
            if i != len(depths) - 1:
                layers.append(PatchMerging((res, res), dim))
                res, dim = res // 2, dim * 2
        self.layers = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.layers(self.patch_embed(x)))
        x = torch.flatten(self.avgpool(x.transpose(1, 2)), 1)
        return self.head(x)


def swin_t() -> nn.Module:
    return SwinTransformer()
