"""Weights that make an equality check mean something.

A freshly initialised model often computes next to nothing: BatchNorm biases and running means
are 0 and running variances 1, layer scales start at 1e-6, classifier heads at 0. Pruning such
a model and comparing outputs proves little (an all-zero head makes every plan "exact"). So
:func:`realistic_weights` gives a *copy* of the model non-degenerate weights:

* every floating parameter or buffer whose elements are all equal (a constant tensor of more
  than one element) is redrawn: zeros become small random values (``1/sqrt(fan_in)`` for a
  matrix or kernel, 0.5 for a vector), a non-zero constant ``c`` becomes ``c * U(0.5, 1.5)``
  elementwise (signs and positivity kept, so a variance stays positive), and a tiny constant
  (``|c| < 1e-3``, a layer scale) is treated as 1;
* then BatchNorm running statistics are calibrated on the example inputs (a cumulative average
  over one forward pass in training mode), so activations keep their scale.

Weights that already vary (random conv kernels, trained weights) are left as they are. The
user's model is never changed.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from gdp_graph.graph.model_copy import deepcopy_model

__all__ = ["realistic_weights"]

_TINY = 1e-3


def _redraw(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    c = float(t.reshape(-1)[0])
    if c == 0.0:
        fan_in = t[0].numel() if t.dim() >= 2 else 1
        std = 1.0 / math.sqrt(fan_in) if t.dim() >= 2 else 0.5
        return torch.randn(t.shape, generator=generator, dtype=t.dtype) * std
    base = 1.0 if abs(c) < _TINY else c
    return base * (0.5 + torch.rand(t.shape, generator=generator, dtype=t.dtype))


def _is_constant(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.numel() > 1 and bool((t == t.reshape(-1)[0]).all())


_STATS = ("running_mean", "running_var", "num_batches_tracked")


@torch.no_grad()
def _calibrate_batchnorm(model: nn.Module, inputs: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Running statistics from one training-mode forward; if that forward fails (one value per
    channel at batch 1, a model that only runs in eval mode), every norm keeps the statistics
    it had, never the reset ones (mean 0, variance 1)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    saved = [(m.momentum, {k: getattr(m, k).clone() for k in _STATS if getattr(m, k, None) is not None}) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass sets the statistics of that batch
    model.train()
    try:
        model(*inputs, **kwargs)
    except Exception:  # noqa: BLE001 - calibration is best effort: the checks that follow run the model again
        for m, (_, stats) in zip(norms, saved):
            for k, value in stats.items():
                getattr(m, k).copy_(value)
    finally:
        model.train(was_training)
        for m, (momentum, _) in zip(norms, saved):
            m.momentum = momentum


def realistic_weights(model: nn.Module, example_inputs: Sequence[Any] | Mapping[str, Any] = (), *,
                      seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with its degenerate weights redrawn and its BatchNorm statistics
    calibrated on ``example_inputs`` (a tuple, or a dict of keyword inputs); see the module
    docstring. Deterministic for a given ``seed``.

    >>> m = realistic_weights(nn.BatchNorm1d(4))
    >>> bool((m.bias == 0).all())
    False
    """
    copied = deepcopy_model(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*copied.parameters(), *copied.buffers()]:
            if _is_constant(tensor):
                tensor.copy_(_redraw(tensor.detach().cpu(), generator).to(tensor.device))
    if isinstance(example_inputs, Mapping):
        _calibrate_batchnorm(copied, (), example_inputs)
    else:
        _calibrate_batchnorm(copied, tuple(example_inputs), {})
    copied.eval() if not model.training else copied.train()
    return copied
