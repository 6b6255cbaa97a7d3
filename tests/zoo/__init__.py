"""Reference model zoo for the gdp-graph tests.

``ZOO`` maps a short name to a zero-argument factory returning
``(model, example_inputs)``: the model is seeded (``torch.manual_seed(0)``),
in eval mode, with randomized norm statistics / affine parameters; the
example inputs are a tuple of batch-size-2 tensors. Every model is a small
but structurally faithful version of a published architecture, written the
way reference codebases write it, and is ``torch.fx.symbolic_trace``-able
except the ones listed in ``UNTRACEABLE``.
"""
from __future__ import annotations

from typing import Dict

from . import (convnext, densenet, ghostnet, hrnet, inception, levit, library_styles, misc, mixers, mobile, nfnet, res2net,
               resnets, segmentation, sequence, shufflenet, swin, t5, vgg, vit, yolo)
from ._common import Factory, randomize_norms, zoo_factory

_ORDER = [
    "vgg",
    "resnet_basic",
    "resnet_bottleneck",
    "resnet_cifar_optiona",
    "resnext",
    "mobilenetv2",
    "mobilenetv3",
    "efficientnet",
    "densenet",
    "inception",
    "shufflenetv2",
    "convnext",
    "vit",
    "vit_manual_attn",
    "vit_mha",
    "swin",
    "unet",
    "deeplab_aspp",
    "embedding_lm",
    "pixelshuffle_sr",
    "grouped_norm",
    "untraceable",
    "vit_torchvision",
    "efficientnet_stochastic_depth",
    "resnet_timm_normact",
    "decoder_hf4_style",
    "gpt2_hf4_style",
    "levit",
    "nfnet",
    "yolov8",
    "ghostnet",
    "res2net",
    "resnest",
    "mlp_mixer",
    "convmixer",
    "poolformer",
    "hrnet",
    "repvgg",
    "wav2vec2",
    "textcnn",
    "hifigan",
    "t5_encoder",
]


def _collect() -> Dict[str, Factory]:
    entries: Dict[str, Factory] = {}
    for family in (vgg, resnets, mobile, densenet, inception, shufflenet, convnext, vit, swin, segmentation, misc,
                   library_styles, levit, nfnet, yolo, ghostnet, res2net, mixers, hrnet, sequence, t5):
        for name, factory in family.ENTRIES.items():
            assert name not in entries, f"duplicate zoo name {name!r}"
            entries[name] = factory
    assert set(entries) == set(_ORDER), sorted(set(entries) ^ set(_ORDER))
    return {name: entries[name] for name in _ORDER}


ZOO: Dict[str, Factory] = _collect()

# Models whose forward has data-dependent control flow (torch.fx cannot trace them).
UNTRACEABLE = frozenset({"untraceable", "gpt2_hf4_style", "yolov8", "t5_encoder"})  # gpt2: slices a buffer by
# sizes; yolov8: C2f iterates a chunk's result (list(x.chunk(2, 1))); t5: torch.finfo(proxy.dtype)
ZOO_TRACEABLE: Dict[str, Factory] = {name: f for name, f in ZOO.items() if name not in UNTRACEABLE}

__all__ = ["ZOO", "ZOO_TRACEABLE", "UNTRACEABLE", "Factory", "randomize_norms", "zoo_factory"]
