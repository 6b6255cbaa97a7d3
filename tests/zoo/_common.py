"""Shared helpers for the reference model zoo.

Every zoo entry is a zero-argument factory returning ``(model, example_inputs)``.
Factories seed torch, build the model, give every normalization layer
non-trivial statistics/affine parameters (so output comparisons are
meaningful), switch to eval mode and build batch-size-2 example inputs.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import nn

Inputs = Tuple[torch.Tensor, ...]
Factory = Callable[[], Tuple[nn.Module, Inputs]]

BATCH = 2


def _is_norm_layer(module: nn.Module) -> bool:
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return True
    # Custom norm classes written the way reference repos do (e.g. ConvNeXt's LayerNorm).
    return "Norm" in type(module).__name__


@torch.no_grad()
def randomize_norms(model: nn.Module) -> nn.Module:
    """Randomize BN running stats and the affine params of every norm layer."""
    for module in model.modules():
        if not _is_norm_layer(module):
            continue
        running_mean = getattr(module, "running_mean", None)
        running_var = getattr(module, "running_var", None)
        if isinstance(running_mean, torch.Tensor):
            running_mean.normal_(0.0, 0.1)
        if isinstance(running_var, torch.Tensor):
            running_var.uniform_(0.5, 1.5)
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        if isinstance(weight, nn.Parameter):
            weight.uniform_(0.5, 1.5)
        if isinstance(bias, nn.Parameter):
            bias.normal_(0.0, 0.1)
    return model


def zoo_factory(build: Callable[[], nn.Module], make_inputs: Callable[[], Inputs]) -> Factory:
    """Wrap a model builder and an input builder into a deterministic zoo factory."""

    def factory() -> Tuple[nn.Module, Inputs]:
        torch.manual_seed(0)
        model = build()
        randomize_norms(model)
        model.eval()
        inputs = make_inputs()
        return model, inputs

    factory.__name__ = f"factory_{getattr(build, '__name__', 'model')}"
    factory.__doc__ = build.__doc__
    return factory


def images(size: int = 32, channels: int = 3) -> Callable[[], Inputs]:
    """Input builder for a batch of random images ``[2, channels, size, size]``."""

    def make() -> Inputs:
        return (torch.randn(BATCH, channels, size, size),)

    return make
