"""Token mixers without attention, in the coding styles of their reference codebases.

* ``MlpMixer`` (Tolstikhin et al. 2021; timm's ``mlp_mixer.py``): a conv patch embedding
  flattened to tokens, ``MixerBlock``s whose token MLP runs on the transposed tensor
  (``self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)``), a channel MLP, a final
  LayerNorm, ``x.mean(dim=1)`` and a head;
* ``ConvMixer`` (Trockman & Kolter 2022; the paper's own code): a plain ``nn.Sequential`` with a
  ``Residual`` wrapper (``self.fn(x) + x``) around a depthwise conv with ``padding="same"``,
  GELU before BatchNorm;
* ``PoolFormer`` (Yu et al. 2022; sail-sg/poolformer): ``GroupNorm(1, C)`` as the norm
  (a ``nn.GroupNorm`` subclass), ``self.pool(x) - x`` as the token mixer, 1x1-conv MLPs and layer
  scales as ``nn.Parameter`` vectors multiplied as ``.unsqueeze(-1).unsqueeze(-1)``.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ._common import images, zoo_factory

# --------------------------------------------------------------------------- MLP-Mixer


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, bias=True, drop=0.,
                 use_conv=False):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        linear_layer = partial(nn.Conv2d, kernel_size=1) if use_conv else nn.Linear
        self.fc1 = linear_layer(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = linear_layer(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, img_size=32, patch_size=4, in_chans=3, embed_dim=32, norm_layer=None, flatten=True):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.flatten = flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
        x = self.norm(x)
        return x


class MixerBlock(nn.Module):
    def __init__(self, dim, seq_len, mlp_ratio=(0.5, 4.0), mlp_layer=Mlp,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, drop=0., drop_path=0.):
        super().__init__()
        tokens_dim, channels_dim = [int(x * dim) for x in mlp_ratio]
        self.norm1 = norm_layer(dim)
        self.mlp_tokens = mlp_layer(seq_len, tokens_dim, act_layer=act_layer, drop=drop)
        self.drop_path = nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp_channels = mlp_layer(dim, channels_dim, act_layer=act_layer, drop=drop)

    def forward(self, x):
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        x = x + self.drop_path(self.mlp_channels(self.norm2(x)))
        return x


class MlpMixer(nn.Module):
    def __init__(self, num_classes=10, img_size=32, in_chans=3, patch_size=4, num_blocks=2, embed_dim=32,
                 mlp_ratio=(0.5, 4.0), norm_layer=partial(nn.LayerNorm, eps=1e-6), global_pool='avg'):
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.stem = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.blocks = nn.Sequential(*[
            MixerBlock(embed_dim, self.stem.num_patches, mlp_ratio, norm_layer=norm_layer)
            for _ in range(num_blocks)])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(0.)
        self.head = nn.Linear(embed_dim, self.num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.stem(x)
        x = self.blocks(x)
        x = self.norm(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


# --------------------------------------------------------------------------- ConvMixer


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def ConvMixer(dim=32, depth=3, kernel_size=5, patch_size=4, n_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size),
        nn.GELU(),
        nn.BatchNorm2d(dim),
        *[nn.Sequential(
            Residual(nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"),
                nn.GELU(),
                nn.BatchNorm2d(dim)
            )),
            nn.Conv2d(dim, dim, kernel_size=1),
            nn.GELU(),
            nn.BatchNorm2d(dim)
        ) for i in range(depth)],
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(dim, n_classes)
    )


# --------------------------------------------------------------------------- PoolFormer


class GroupNorm(nn.GroupNorm):
    """Group Normalization with 1 group. Input: tensor in shape [B, C, H, W]"""

    def __init__(self, num_channels, **kwargs):
        super().__init__(1, num_channels, **kwargs)


class Pooling(nn.Module):
    def __init__(self, pool_size=3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class PoolFormerBlock(nn.Module):
    def __init__(self, dim, pool_size=3, mlp_ratio=4., act_layer=nn.GELU, norm_layer=GroupNorm, drop=0.,
                 drop_path=0., use_layer_scale=True, layer_scale_init_value=1e-5):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.token_mixer = Pooling(pool_size=pool_size)
        self.norm2 = norm_layer(dim)
        mlp_hidden_dim = int(dim * mlp_ratio)
        self.mlp = Mlp(in_features=dim, hidden_features=mlp_hidden_dim, act_layer=act_layer, drop=drop, use_conv=True)
        self.drop_path = nn.Identity()
        self.use_layer_scale = use_layer_scale
        if use_layer_scale:
            self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones((dim)), requires_grad=True)
            self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones((dim)), requires_grad=True)

    def forward(self, x):
        if self.use_layer_scale:
            x = x + self.drop_path(self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * self.token_mixer(self.norm1(x)))
            x = x + self.drop_path(self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * self.mlp(self.norm2(x)))
        else:
            x = x + self.drop_path(self.token_mixer(self.norm1(x)))
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class PoolFormer(nn.Module):
    def __init__(self, layers=(2, 1), embed_dims=(16, 32), mlp_ratios=(4, 4), num_classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dims[0], kernel_size=7, stride=4, padding=2)
        network = []
        for i in range(len(layers)):
            network.append(nn.Sequential(*[PoolFormerBlock(embed_dims[i], mlp_ratio=mlp_ratios[i])
                                           for _ in range(layers[i])]))
            if i < len(layers) - 1:
                network.append(nn.Conv2d(embed_dims[i], embed_dims[i + 1], kernel_size=3, stride=2, padding=1))
        self.network = nn.ModuleList(network)
        self.norm = GroupNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        with torch.no_grad():  # layer scales as if trained (they start at 1e-5)
            for name, p in self.named_parameters():
                if "layer_scale" in name:
                    p.uniform_(0.2, 1.0)

    def forward_tokens(self, x):
        for idx, block in enumerate(self.network):
            x = block(x)
        return x

    def forward(self, x):
        x = self.patch_embed(x)
        x = self.forward_tokens(x)
        x = self.norm(x)
        cls_out = self.head(x.mean([-2, -1]))
        return cls_out


ENTRIES = {
    "mlp_mixer": zoo_factory(MlpMixer, images(32)),
    "convmixer": zoo_factory(ConvMixer, images(32)),
    "poolformer": zoo_factory(PoolFormer, images(32)),
}
