"""LeViT (Graham et al. 2021) in the coding style of timm's ``levit.py``.

* ``ConvNorm`` stem: conv + BatchNorm2d pairs with Hardswish between, then the feature map
  flattened into tokens (``x.flatten(2).transpose(1, 2)``);
* ``LinearNorm``: ``nn.Linear`` followed by ``nn.BatchNorm1d`` over the flattened tokens
  (``self.bn(x.flatten(0, 1)).reshape_as(x)``), used for q/k/v, projections and MLPs;
* attention whose logits get a learned bias per head and relative position, read from a table
  by an index buffer: ``self.attention_biases[:, self.attention_bias_idxs]`` (the table is
  ``heads x positions``, the index ``positions x positions``), heads split off by
  ``view(B, N, heads, -1).split([key_dim, key_dim, val_dim], dim=3)``;
* a subsampling attention between stages (queries from every other token,
  ``x.view(B, res, res, C)[:, ::2, ::2]``), residual blocks ``x + self.m(x)``, and a
  ``BatchNorm1d`` + ``Linear`` head on the mean token.

timm caches the indexed bias table per device in eval mode; that cache is left out here (it
would hold a torch.fx proxy across calls), the indexing itself is as timm writes it.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._common import images, zoo_factory


class ConvNorm(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0):
        super().__init__()
        self.linear = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


class LinearNorm(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class NormLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(x))


def _relative_index(resolution: int, stride: int = 1) -> torch.Tensor:
    """For each query position (every ``stride``-th), the index into a ``resolution**2`` bias
    table of its offset to every key position."""
    grid = torch.stack(torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")).flatten(1)
    queries = torch.stack(torch.meshgrid(torch.arange(0, resolution, stride), torch.arange(0, resolution, stride),
                                         indexing="ij")).flatten(1)
    offset = (queries[..., :, None] - grid[..., None, :]).abs()
    return offset[0] * resolution + offset[1]


class _BiasedAttention(nn.Module):
    """What timm's Attention and AttentionSubsample share: head sizes, the output projection
    and the bias table indexed by relative position."""

    def __init__(self, out_dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 stride: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads
        self.proj = nn.Sequential(OrderedDict([("act", nn.Hardswish()),
                                               ("ln", LinearNorm(self.val_attn_dim, out_dim))]))
        self.attention_biases = nn.Parameter(torch.randn(num_heads, resolution * resolution) * 0.5)
        self.register_buffer("attention_bias_idxs", _relative_index(resolution, stride), persistent=False)

    def get_attention_biases(self, device: torch.device) -> torch.Tensor:
        return self.attention_biases[:, self.attention_bias_idxs]


class Attention(_BiasedAttention):
    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int):
        super().__init__(dim, key_dim, num_heads, attn_ratio, resolution)
        self.qkv = LinearNorm(dim, self.val_attn_dim + 2 * key_dim * num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q = q.permute(0, 2, 1, 3)
        k = k.permute(0, 2, 3, 1)
        v = v.permute(0, 2, 1, 3)
        attn = q @ k * self.scale + self.get_attention_biases(x.device)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        return self.proj(x)


class Subsample(nn.Module):
    def __init__(self, stride: int, resolution: int):
        super().__init__()
        self.stride = stride
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        x = x.view(B, self.resolution, self.resolution, C)[:, ::self.stride, ::self.stride]
        return x.reshape(B, -1, C)


class AttentionSubsample(_BiasedAttention):
    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int, attn_ratio: float,
                 stride: int, resolution: int):
        super().__init__(out_dim, key_dim, num_heads, attn_ratio, resolution, stride)
        self.resolution_out = (resolution - 1) // stride + 1
        self.kv = LinearNorm(in_dim, self.val_attn_dim + key_dim * num_heads)
        self.q = nn.Sequential(OrderedDict([("down", Subsample(stride, resolution)),
                                            ("ln", LinearNorm(in_dim, key_dim * num_heads))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        k, v = self.kv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=3)
        k = k.permute(0, 2, 3, 1)
        v = v.permute(0, 2, 1, 3)
        q = self.q(x).view(B, -1, self.num_heads, self.key_dim).permute(0, 2, 1, 3)
        attn = q @ k * self.scale + self.get_attention_biases(x.device)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, -1, self.val_attn_dim)
        return self.proj(x)


class LevitMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.ln1 = LinearNorm(dim, hidden)
        self.act = nn.Hardswish()
        self.ln2 = LinearNorm(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln2(self.act(self.ln1(x)))


class Residual(nn.Module):
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class Levit(nn.Module):
    """Two stages (dim 32 at 8x8 tokens, dim 48 at 4x4) joined by a subsampling attention."""

    def __init__(self, num_classes: int = 10, dims: tuple[int, int] = (32, 48), key_dim: int = 8,
                 heads: tuple[int, int] = (2, 3), resolution: int = 8):
        super().__init__()
        self.stem = nn.Sequential(ConvNorm(3, 8, 3, 2, 1), nn.Hardswish(), ConvNorm(8, dims[0], 3, 2, 1))
        self.stage1 = nn.Sequential(Residual(Attention(dims[0], key_dim, heads[0], 2.0, resolution)),
                                    Residual(LevitMlp(dims[0], 2 * dims[0])))
        self.downsample = AttentionSubsample(dims[0], dims[1], key_dim, 4, 4.0, 2, resolution)
        res = (resolution - 1) // 2 + 1
        self.stage2 = nn.Sequential(Residual(LevitMlp(dims[1], 2 * dims[1])),
                                    Residual(Attention(dims[1], key_dim, heads[1], 2.0, res)),
                                    Residual(LevitMlp(dims[1], 2 * dims[1])))
        self.head = NormLinear(dims[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x.flatten(2).transpose(1, 2)
        x = self.stage2(self.downsample(self.stage1(x)))
        return self.head(x.mean(1))


ENTRIES = {"levit": zoo_factory(Levit, images(32))}
