"""A branch's output on zeroed inputs, computed on one position instead of every position.

A removable branch is tested by zeroing the inputs of its last layers (:func:`~gdp_graph.graph
.blocks.branch_constant`): a zeroed linear or convolution returns its bias at every position,
and what follows it is, in most networks, position-wise (a norm in eval mode, an activation, a
layer scale). Running those ops on the full activation (1 x 256 x 56 x 56 in a ResNet-50) cost
a tenth of the analysis; the same ops on the bias alone, kept with size 1 on every other dim,
give the same value at every position, and broadcasting against full-size operands keeps it
exact. Any other op hands the branch back to the full run.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph.meta import returned_input

#: modules that act on each position alone (per-channel parameters at most), in eval mode
_POSITIONWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
                         nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout)
#: element-wise functions with broadcasting
_ELEMENTWISE_FUNCTIONS = frozenset({operator.add, operator.mul, operator.sub, operator.truediv, torch.add,
                                    torch.mul, torch.sub, torch.relu, torch.sigmoid, torch.tanh,
                                    nn.functional.relu, nn.functional.silu, nn.functional.gelu,
                                    nn.functional.hardswish, nn.functional.hardsigmoid})

#: methods that only reorder dims: on a tensor of size 1 along some dims, the same reordering
#: of the full tensor broadcast (a view or reshape, which read sizes, are not)
_REORDERING_METHODS = frozenset({"permute", "transpose", "contiguous"})


def _rolls_given_dims(n: fx.Node) -> bool:
    """A roll or flip along named dims: per dim, so on one position of a dim it is that position."""
    if n.target in ("roll", torch.roll):
        return n.op in ("call_method", "call_function") and (len(n.args) > 2 or "dims" in n.kwargs)
    return n.target in ("flip", torch.flip) and n.op in ("call_method", "call_function")


def _reads_a_shape(n: fx.Node, value_key: str) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()`` or an item of those: sizes, not values."""
    if isinstance(n.meta.get(value_key), torch.Tensor):
        return False
    if n.op == "call_method":
        return n.target in ("size", "dim")
    if n.op == "call_function" and n.target is getattr:
        return len(n.args) == 2 and n.args[1] in ("shape", "ndim")
    if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node):
        return _reads_a_shape(n.args[0], value_key)
    return False


def _keeps_last_dim(n: fx.Node, env: dict, value_key: str) -> bool:
    """A view or reshape of a one-position tensor (size 1 on every dim but the last) that keeps
    the last dim's size: in row-major order each position keeps its place along the last dim,
    so the full tensor's view is the same labels' broadcast."""
    if not (n.op == "call_method" and n.target in ("view", "reshape") and isinstance(n.args[0], fx.Node)):
        return False
    value, full_in, full_out = env[n.args[0]], n.args[0].meta.get(value_key), n.meta.get(value_key)
    if not all(isinstance(v, torch.Tensor) for v in (value, full_in, full_out)) or value.dim() != full_in.dim():
        return False
    size = value.shape[-1]
    return value.numel() == size and (size == 1 or full_in.shape[-1] == full_out.shape[-1] == size)


def _positionwise_module(layer: nn.Module) -> bool:
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        # eval mode with running statistics: a per-channel affine map (batch statistics are not)
        return not layer.training and layer.running_mean is not None and layer.running_var is not None
    return isinstance(layer, _POSITIONWISE_MODULES) and not (isinstance(layer, nn.Dropout) and layer.training)


def _zeroed_bias(n: fx.Node, value: Any, layer: Optional[nn.Module], bias_layers: dict[type, int],
                 zeroed: set) -> Optional[torch.Tensor]:
    """The bias a zeroed linear/convolution layer returns, with size 1 on every dim but its
    channels (None when ``n`` is not such a layer with its only input zeroed). ``value``: the
    node's recorded value (its shape and dtype)."""
    if layer is None or type(layer) not in bias_layers or (n.name, 0) not in zeroed or len(n.args) != 1 \
            or n.kwargs or not isinstance(value, torch.Tensor):
        return None
    full = value.shape
    spatial = bias_layers[type(layer)]
    channel = len(full) - 1 if spatial == 0 else len(full) - 1 - spatial
    shape = [1] * len(full)
    shape[channel] = full[channel]
    bias = getattr(layer, "bias", None)
    if bias is None:
        return torch.zeros(shape, dtype=value.dtype, device=value.device)
    if bias.is_meta or bias.numel() != full[channel]:
        return None
    return bias.detach().to(value.dtype).reshape(shape).clone()  # an in-place activation may follow


def collapsed_run(order: list[fx.Node], env: dict, zeroed: set, fetch: Callable[[str], Any],
                  run_node: Callable[[fx.Node], Any], bias_layers: dict[type, int], value_key: str) -> bool:
    """Run ``order`` (the branch's nodes to run again, in graph order) into ``env`` with every
    zeroed layer's output collapsed to one position; False (``env`` partly filled) as soon as an
    op is not known to act position by position, so the caller runs the branch in full."""
    for n in order:
        layer = fetch(str(n.target)) if n.op == "call_module" else None
        bias = _zeroed_bias(n, n.meta.get(value_key), layer, bias_layers, zeroed)
        if bias is not None:
            env[n] = bias
            continue
        if any((n.name, i) in zeroed for i in range(len(n.args))):
            return False
        if n.op == "get_attr":
            env[n] = run_node(n)
        elif n.op == "call_module" and _positionwise_module(layer) and len(n.args) == 1 and not n.kwargs:
            env[n] = run_node(n)
        elif n.op == "call_function" and n.target in _ELEMENTWISE_FUNCTIONS:
            env[n] = run_node(n)
        elif n.op == "call_method" and n.target in _REORDERING_METHODS or _rolls_given_dims(n):
            env[n] = run_node(n)
        elif _reads_a_shape(n, value_key):
            env[n] = n.meta[value_key]  # the full run's shapes are the recorded ones
        elif _keeps_last_dim(n, env, value_key):
            value = env[n.args[0]]
            env[n] = value.reshape([1] * (n.meta[value_key].dim() - 1) + [value.shape[-1]])
        elif (same := returned_input(n, layer)) is not None:
            env[n] = env[same]  # handed its input back on the example (a drop-path in eval mode)
        else:
            return False
    return True
