"""Rules for elementwise ops: unary ops pass channels through, binary ops tie them."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from gdp_graph.graph.meta import returned_input
from gdp_graph.graph.rules.registry import OpRule, register_rule

_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.Threshold,
)
_UNARY_FUNCTIONS = (
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.softsign, F.logsigmoid, F.dropout, F.dropout1d,
    F.dropout2d, F.dropout3d, F.alpha_dropout, F.threshold,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.abs, torch.neg, torch.clamp, torch.clip, torch.sin, torch.cos, torch.erf,
    torch.square, torch.reciprocal, torch.nan_to_num, torch.dropout, torch.clone,
    torch.nn.functional.sigmoid, torch.nn.functional.tanh,
    operator.neg, operator.pos,
)
_UNARY_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "rsqrt", "abs",
    "neg", "clamp", "clamp_", "clip", "square", "reciprocal", "erf", "sin", "cos",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type",
    "type_as", "requires_grad_", "cpu", "cuda", "nan_to_num",
)


@register_rule(*_UNARY_MODULES, *_UNARY_FUNCTIONS, *_UNARY_METHODS)
def unary_rule(ctx):
    """Channel-wise ops: output channels are the input's."""
    return ctx.passthrough(0)


def add_rule(ctx):
    """Residual adds: channels at the same position are one channel."""
    return ctx.broadcast_merge([ctx.arg(0), ctx.arg(1, "other")], "residual")


@register_rule(operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
               "add", "add_", "sub", "sub_")
class AddRule(OpRule):
    """Adds tie channels (:func:`add_rule`). ``+`` on tuples builds shapes: in
    ``x.view(x.size()[:-1] + (heads, head_dim))`` the literal part holds channel counts, which
    become the kept counts of the view they shape."""

    def propagate(self, ctx):
        return add_rule(ctx)

    def rewrite_args(self, rctx):
        value = rctx.original_value()
        if not isinstance(value, tuple) or len(rctx.args) != 2:
            return None
        views = [u for u in rctx.node.users if u.op == "call_method" and u.target in ("view", "reshape")
                 and len(u.args) == 2 and u.args[1] is rctx.node]
        if len(views) != 1:
            return None
        view = rctx.for_node(views[0])
        changed, new_shape = view.out_changed_dims(), view.new_out_shape()
        if not changed:
            return None
        left, right = rctx.args
        if isinstance(right, tuple):  # size()[:k] + (literal, ...)
            offset = len(value) - len(right)
            right = tuple(new_shape[offset + i] if offset + i in changed and s != -1 else s
                          for i, s in enumerate(right))
        elif isinstance(left, tuple):  # (literal, ...) + size()[k:]
            left = tuple(new_shape[i] if i in changed and s != -1 else s for i, s in enumerate(left))
        else:
            return None
        return (left, right), rctx.kwargs


@register_rule(operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul,
               torch.div, torch.maximum, torch.minimum, operator.pow, torch.pow,
               "mul", "mul_", "div", "div_", "pow", "maximum", "minimum")
def multiply_rule(ctx):
    """Multiplies (squeeze-excitation, gating), divisions, powers: channels tie by position."""
    return ctx.broadcast_merge([ctx.arg(0), ctx.arg(1, "other")], "multiply")


@register_rule(torch.where)
def where_rule(ctx):
    return ctx.broadcast_merge([ctx.arg(0), ctx.arg(1), ctx.arg(2)], "multiply")


@register_rule(torch.addcmul, "addcmul")
def addcmul_rule(ctx):
    return ctx.broadcast_merge([ctx.arg(0), ctx.arg(1), ctx.arg(2)], "multiply")


def returns_an_input(ctx):
    """For an op without a rule: the channels of the input it returned as is, or None.

    An op that hands back one of its inputs (the very tensor) changed nothing on the example
    inputs: torchvision's ``stochastic_depth`` in eval mode, a wrapped ``drop_path``, a logging
    hook. Channels pass through it; anything else without a rule stays refused.
    """
    same = returned_input(ctx.node, ctx.module)
    if same is None:
        return None
    return ctx.passthrough(ctx.node.args.index(same))
