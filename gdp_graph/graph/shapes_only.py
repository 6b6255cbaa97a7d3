"""The recording forward without the arithmetic that no rule reads.

Rules read the shapes, dtypes and identities of activations, never their numbers; yet a
convolution's or a linear layer's arithmetic was most of the recording forward (a ResNet-50 on
1 x 3 x 224 x 224: 0.08 of its 0.09 s). In this run such a layer (:func:`skipped_output`), a norm
or an activation after it, and broadcasting arithmetic on its output (:func:`skipped_function`)
return zeros of the shape they would have returned; every node computed from one holds a value
whose numbers mean nothing, marked ``node.meta[SHAPE_ONLY]``. Only ops whose output shape cannot
depend on the numbers may take such values (:func:`shape_safe`); any other stops the run
(:class:`NeedsValues`) and the caller records every value in full. A reader of numbers (a
branch's constant, a later stage) first asks for the real values
(:meth:`~gdp_graph.graph.trace.TracedModel.real_values`), which runs the full recording once.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.utils._pytree import tree_leaves

from gdp_graph.graph.meta import SHAPE_ONLY, VALUE


class NeedsValues(Exception):
    """An op that may read the numbers of a shape-only value: the run is redone in full."""


#: layers left out (:func:`skipped_output`): convolutions (with their spatial dims) and linear
#: layers, and after them batch norms (with the input dims they take) and activations
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_MIXING = frozenset({*_CONVS, nn.Linear})
_NORMS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}
_ACTIVATIONS = frozenset({nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                          nn.LeakyReLU, nn.ELU, nn.Mish})
SKIPPED = _MIXING | frozenset(_NORMS) | _ACTIVATIONS
#: functions left out on shape-only operands: broadcasting arithmetic (never in place)
SKIPPED_FUNCTIONS = frozenset({operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.sub})
#: stock layers whose output shape does not depend on the numbers they read (exact types: a
#: subclass may override forward)
_MODULES = frozenset({
    *_CONVS, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Softmax, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.Hardtanh, nn.Upsample, nn.Unflatten, nn.ZeroPad2d, nn.ChannelShuffle,
})
_F = nn.functional
#: functions of the same kind (none writes into an argument: an in-place op could write
#: numbers no one knows into a value that holds real ones)
_FUNCTIONS = frozenset({
    operator.add, operator.mul, operator.sub, operator.truediv, operator.neg, operator.matmul,
    torch.add, torch.mul, torch.sub, torch.matmul, torch.cat, torch.stack, torch.flatten, torch.roll,
    torch.permute, torch.transpose, torch.reshape, torch.sigmoid, torch.tanh, torch.sqrt, torch.rsqrt,
    torch.relu, torch.softmax, torch.mean, torch.split, torch.chunk, torch.unbind, torch.squeeze, torch.unsqueeze,
    _F.relu, _F.relu6, _F.hardtanh, _F.leaky_relu, _F.elu, _F.mish, _F.gelu, _F.silu, _F.hardswish, _F.hardsigmoid,
    _F.sigmoid, _F.softmax, _F.layer_norm, _F.group_norm, _F.linear, _F.adaptive_avg_pool1d,
    _F.adaptive_avg_pool2d, _F.avg_pool2d, _F.max_pool2d, _F.pad, _F.interpolate, _F.dropout,
    _F.scaled_dot_product_attention,
})
#: tensor methods of the same kind
_METHODS = frozenset({
    "view", "reshape", "permute", "transpose", "contiguous", "flatten", "unsqueeze", "squeeze", "expand",
    "mean", "sum", "chunk", "split", "unbind", "softmax", "reshape_as", "view_as", "expand_as", "mul", "add",
    "sub", "div", "pow", "sigmoid", "relu", "tanh", "sqrt", "rsqrt", "clone", "flip", "roll", "matmul",
    "type_as", "float", "t",
})
#: what reads only a value's shape: its output holds real numbers
_SHAPE_METHODS = frozenset({"size", "dim", "numel"})
_SHAPE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device"})


def reads_a_shape(n: fx.Node) -> bool:
    """``x.size()``, ``x.dim()``, ``x.shape``: real numbers, whatever ``x`` holds."""
    if n.op == "call_method":
        return n.target in _SHAPE_METHODS
    return n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] in _SHAPE_ATTRIBUTES


def _hooked(layer: nn.Module) -> bool:
    return bool(layer._forward_hooks or layer._forward_pre_hooks or module_hooks._global_forward_hooks
                or module_hooks._global_forward_pre_hooks)


def shape_safe(n: fx.Node, layer: Optional[nn.Module]) -> bool:
    """Whether ``n`` may run on shape-only inputs: an op whose output shape does not depend on
    the numbers of its inputs (and that writes into none that holds real numbers)."""
    if n.op == "call_module":
        return layer is not None and type(layer) in _MODULES and not _hooked(layer) \
            and not (isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.training)
    if n.op == "call_method":
        return n.target in _METHODS or n.target in _SHAPE_METHODS
    if n.op == "call_function":
        if n.target is operator.getitem:  # an integer or slice index: a tensor index reads numbers
            return not any(isinstance(a, fx.Node) and isinstance(a.meta.get(VALUE), torch.Tensor)
                           for a in tree_leaves(n.args[1:]))
        if n.target is _F.batch_norm:  # training: running statistics updated from the numbers
            return not (n.args[5] if len(n.args) > 5 else n.kwargs.get("training", False))
        return n.target in _FUNCTIONS or reads_a_shape(n)
    return n.op == "output"


class Zeros:
    """Zeros of any shape, as views of one zeroed buffer per dtype and device: a fresh tensor of
    zeros per left-out layer cost a memset each (a third of a MobileNetV3's shapes-only run).
    Uninitialized memory would be cheaper still, but its leftovers (label tensors read as floats
    are denormals) made the ops that do run on it crawl."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get((dtype, device))
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[(dtype, device)] = torch.zeros(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)


def skipped_output(layer: nn.Module, args: tuple, kwargs: dict, zeros: Zeros, fed: bool) -> Optional[torch.Tensor]:
    """What a stock layer of :data:`SKIPPED` returns, as zeros (its shape, dtype and layout, not
    its numbers), or None where it must run: a hook, an input of another dtype, device or layout
    than its weights (the run raises what the layer would). A norm or an activation is left out
    only where its input holds a shape already (``fed``): in place on real numbers, it changes them.
    """
    kind = type(layer)
    if kind not in SKIPPED or kwargs or len(args) != 1 or _hooked(layer) or (kind not in _MIXING and not fed):
        return None
    x = args[0]
    if type(x) is not torch.Tensor or not x.is_floating_point() or x.is_meta or not x.is_contiguous():
        return None
    if kind in _ACTIVATIONS:
        return x if getattr(layer, "inplace", False) else zeros(tuple(x.shape), x.dtype, x.device)
    weights = [getattr(layer, k, None) for k in ("weight", "bias", "running_mean", "running_var")]
    if any(isinstance(w, torch.Tensor) and (w.dtype != x.dtype or w.device != x.device or w.is_meta
                                            or not w.is_contiguous()) for w in weights):
        return None
    if kind in _NORMS:
        shape = _norm_shape(layer, x)
    else:
        shape = _linear_shape(layer, x) if kind is nn.Linear else _conv_shape(layer, x, _CONVS[kind])
    return None if shape is None else zeros(shape, x.dtype, x.device)


def skipped_function(target: object, args: tuple, kwargs: dict, zeros: Zeros) -> Optional[torch.Tensor]:
    """What a function of :data:`SKIPPED_FUNCTIONS` returns, as zeros: the operands' broadcast
    shape in their promoted dtype; None where it must run (keyword arguments, an operand that is
    not a contiguous tensor or a number, shapes that do not broadcast)."""
    if kwargs or len(args) != 2:
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or not all(type(a) is torch.Tensor or type(a) in (int, float, bool) for a in args) or any(
            t.is_meta or not t.is_contiguous() or t.device != tensors[0].device for t in tensors):
        return None
    try:
        shape = torch.broadcast_shapes(*[t.shape for t in tensors])
    except RuntimeError:
        return None
    dtype = torch.result_type(args[0], args[1])
    if dtype == torch.bool and target in (operator.sub, torch.sub):  # raises on booleans
        return None
    return zeros(tuple(shape), dtype, tensors[0].device)


def _norm_shape(layer: nn.Module, x: torch.Tensor) -> Optional[tuple[int, ...]]:
    """A batch norm in eval mode with running statistics: its input's shape (with batch
    statistics, a batch of one raises)."""
    if layer.training or layer.running_mean is None or x.dim() not in _NORMS[type(layer)] \
            or x.shape[1] != layer.num_features:
        return None
    return tuple(x.shape)


def _linear_shape(layer: nn.Linear, x: torch.Tensor) -> Optional[tuple[int, ...]]:
    if x.dim() == 0 or x.shape[-1] != layer.in_features:
        return None
    return (*x.shape[:-1], layer.out_features)


def _conv_shape(layer: nn.Module, x: torch.Tensor, spatial: int) -> Optional[tuple[int, ...]]:
    """A batched convolution's output shape (an unbatched input runs)."""
    if x.dim() != spatial + 2 or x.shape[1] != layer.in_channels:
        return None
    sizes = list(x.shape[2:])
    if isinstance(layer.padding, str):  # "same" keeps the sizes (stride 1 only); "valid" pads none
        padding = [0] * spatial if layer.padding == "valid" else None
    else:
        padding = list(layer.padding)
    if padding is None:
        out = sizes
    else:
        out = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
               zip(sizes, padding, layer.dilation, layer.kernel_size, layer.stride)]
    if min(out, default=1) <= 0:
        return None
    return (x.shape[0], layer.out_channels, *out)


def fed_shapes_only(n: fx.Node, shape_only: set[str]) -> bool:
    """Whether an input of ``n`` holds a shape-only value."""
    return any(a.name in shape_only for a in n.all_input_nodes)


def mark(n: fx.Node, shape_only: set[str]) -> None:
    shape_only.add(n.name)
    n.meta[SHAPE_ONLY] = True


def has_shapes_only(graph: fx.Graph) -> bool:
    return any(n.meta.get(SHAPE_ONLY) for n in graph.nodes)
