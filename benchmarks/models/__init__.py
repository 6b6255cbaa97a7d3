"""Full-size (224 px, ImageNet-width) classification models for the performance benchmarks.

torchvision and timm do not import here, so these are written in their structure, reusing the
building blocks of the test zoo (``tests/zoo``) at the published depths and widths. ``BENCH``
maps a name to a zero-argument factory returning ``(model, example_inputs)`` (eval mode, seeded,
batch 1 at 224 px).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import nn

from benchmarks.models.cnns import densenet121, efficientnet_b0, mobilenet_v3_large, regnet_y_400mf, resnet50
from benchmarks.models.transformers import convnext_tiny, swin_t, vit_b_16

Factory = Callable[[], Tuple[nn.Module, Tuple[torch.Tensor, ...]]]


def _factory(build: Callable[[], nn.Module], size: int = 224) -> Factory:
    def make() -> Tuple[nn.Module, Tuple[torch.Tensor, ...]]:
        torch.manual_seed(0)
        model = build().eval()
        return model, (torch.randn(1, 3, size, size),)

    make.__name__ = build.__name__
    return make


BENCH: Dict[str, Factory] = {
    "resnet50": _factory(resnet50),
    "densenet121": _factory(densenet121),
    "efficientnet_b0": _factory(efficientnet_b0),
    "mobilenet_v3_large": _factory(mobilenet_v3_large),
    "regnet_y_400mf": _factory(regnet_y_400mf),
    "convnext_tiny": _factory(convnext_tiny),
    "vit_b_16": _factory(vit_b_16),
    "swin_t": _factory(swin_t),
}

#: the convolutional models (the latency benchmark prunes these)
CNNS = ("resnet50", "densenet121", "efficientnet_b0", "mobilenet_v3_large", "regnet_y_400mf", "convnext_tiny")
