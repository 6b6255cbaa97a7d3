"""Assorted small models covering ops not found in the classification families.

* ``TinyLM``: token Embedding + learned positions, pre-LayerNorm MLP residual
  blocks, final LayerNorm, Linear head over the vocabulary (nanoGPT-like, no attention).
* ``SuperResolutionNet``: ESPCN/EDSR-style sub-pixel upsampling - conv body
  with residual blocks, a conv producing C * r^2 channels, ``nn.PixelShuffle(2)``.
* ``GroupNormResNet``: diffusion-UNet ResBlocks (Ho et al., DDPM):
  GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> conv, plus skip (1x1 conv
  when the width changes).
* ``UntraceableNet``: ordinary convs around ``gate_block``, whose forward
  branches on ``x.sum() > 0`` - data-dependent control flow torch.fx cannot trace.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import BATCH, images, zoo_factory

# --------------------------------------------------------------------------- token model

VOCAB_SIZE = 50
SEQ_LEN = 8


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.proj(self.act(self.fc(self.ln(x)))))


class TinyLM(nn.Module):
    def __init__(self, vocab_size: int = VOCAB_SIZE, block_size: int = SEQ_LEN, n_embd: int = 32, n_layer: int = 2):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.ModuleList(MLPBlock(n_embd, 4 * n_embd) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        tok_emb = self.wte(idx)  # (b, t, n_embd)
        pos_emb = self.wpe(pos)  # (t, n_embd)
        x = self.drop(tok_emb + pos_emb)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (b, t, vocab)
        return logits


def _token_ids():
    return (torch.randint(0, VOCAB_SIZE, (BATCH, SEQ_LEN), dtype=torch.long),)


# --------------------------------------------------------------------------- super-resolution


class SRResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x).mul(self.res_scale)
        res += x
        return res


class SuperResolutionNet(nn.Module):
    def __init__(self, channels: int = 16, scale: int = 2, n_resblocks: int = 2):
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[SRResBlock(channels) for _ in range(n_resblocks)])
        self.upsample = nn.Sequential(
            nn.Conv2d(channels, channels * scale ** 2, 3, padding=1),
            nn.PixelShuffle(scale),
            nn.ReLU(inplace=True),
        )
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        res = self.body(x)
        res += x
        x = self.upsample(res)
        x = self.tail(x)
        return x


# --------------------------------------------------------------------------- GroupNorm ResBlocks


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 4, dropout: float = 0.0):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(num_groups=num_groups, num_channels=out_channels, eps=1e-6, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        h = self.norm1(h)
        h = F.silu(h)
        h = self.conv1(h)

        h = self.norm2(h)
        h = F.silu(h)
        h = self.dropout(h)
        h = self.conv2(h)

        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class GroupNormResNet(nn.Module):
    def __init__(self, ch: int = 16, num_groups: int = 4):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, kernel_size=3, padding=1)
        self.block1 = ResnetBlock(ch, 2 * ch, num_groups)
        self.block2 = ResnetBlock(2 * ch, 2 * ch, num_groups)
        self.norm_out = nn.GroupNorm(num_groups, 2 * ch, eps=1e-6)
        self.act_out = nn.SiLU()
        self.conv_out = nn.Conv2d(2 * ch, 3, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        h = self.block1(h)
        h = self.block2(h)
        h = self.conv_out(self.act_out(self.norm_out(h)))
        return h


# --------------------------------------------------------------------------- untraceable


class DataDependentGate(nn.Module):
    """Residual conv branch whose nonlinearity depends on the sign of the activation sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.sum() > 0:  # data-dependent Python control flow: not fx-traceable
            y = F.relu(y)
        else:
            y = torch.tanh(y)
        return x + y


class UntraceableNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.gate_block = DataDependentGate(8)
        self.head_conv = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                       nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.gate_block(x)
        x = self.head_conv(x)
        x = self.pool(x).flatten(1)
        return self.fc(x)


ENTRIES = {
    "embedding_lm": zoo_factory(TinyLM, _token_ids),
    "pixelshuffle_sr": zoo_factory(SuperResolutionNet, images(16)),
    "grouped_norm": zoo_factory(GroupNormResNet, images(16)),
    "untraceable": zoo_factory(UntraceableNet, images(16)),
}
