"""Rules for ATen operators, the ops of a graph captured by ``torch.export``.

Most ATen ops take the arguments of their ``torch`` / ``torch.nn.functional`` counterparts in
the same order, so they reuse those rules; data-movement ops are propagated by running the ATen
op itself on label tensors, exactly like their Python spellings. Only ops whose signature
differs (``embedding(weight, ids)``, ``addmm(bias, x, w)``, ``slice``, ``select``, functional
convolutions) have rules of their own here.
"""

from __future__ import annotations

import torch

from gdp_graph.graph.channels import Chan, Track
from gdp_graph.graph.rules import attention, elementwise, layers, reduce, shape
from gdp_graph.graph.rules.context import merge_tracks
from gdp_graph.graph.rules.registry import OpRule, register_rule

aten = torch.ops.aten


def overloads(*names: str) -> list:
    """Every overload of the named ATen ops (``add`` -> ``add.Tensor``, ``add.Scalar``, ...)."""
    found = []
    for name in names:
        packet = getattr(aten, name)
        found.extend(getattr(packet, o) for o in packet.overloads() if o != "out" and not o.endswith("_out"))
    return found


register_rule(*overloads("relu", "gelu", "silu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "neg",
                         "abs", "cos", "sin", "erf", "clone", "contiguous", "alias", "detach", "to",
                         "_to_copy", "dropout", "clamp", "hardtanh", "hardswish", "hardsigmoid", "mish",
                         "leaky_relu", "elu", "square", "reciprocal", "type_as", "lift_fresh_copy",
                         "relu_", "silu_", "gelu_", "hardswish_", "hardsigmoid_", "hardtanh_", "sigmoid_",
                         "tanh_"))(elementwise.unary_rule)
register_rule(*overloads("add", "sub", "rsub", "add_", "sub_"))(elementwise.add_rule)
register_rule(*overloads("mul", "div", "pow", "maximum", "minimum", "mul_", "div_"))(elementwise.multiply_rule)
register_rule(*overloads("where"))(elementwise.where_rule)


@register_rule(*overloads("masked_fill", "masked_fill_"))
def masked_fill_rule(ctx):
    """masked_fill(x, mask, value): x's channels stay where they are; the mask broadcasts."""
    return ctx.broadcast_merge([ctx.arg(0), ctx.arg(1)], "multiply")


register_rule(*overloads("view", "reshape", "expand", "_unsafe_view"))(shape.ViewRule)
register_rule(*overloads("permute", "transpose", "t", "unsqueeze", "squeeze", "movedim", "flip", "roll",
                         "flatten", "repeat", "expand_as"))(shape.PermuteRule)
register_rule(*overloads("cat", "stack"))(shape.CatRule)
register_rule(*overloads("split", "split_with_sizes", "chunk", "tensor_split"))(shape.SplitRule)
register_rule(*overloads("unbind"))(shape.unbind_rule)
register_rule(*overloads("linear"))(attention.functional_linear_rule)
register_rule(*overloads("matmul", "bmm", "mm"))(attention.matmul_rule)
register_rule(*overloads("scaled_dot_product_attention"))(attention.sdpa_rule)
register_rule(*overloads("layer_norm", "rms_norm"))(layers.FunctionalLayerNormRule)
register_rule(*overloads("softmax", "_softmax", "log_softmax"))(reduce.softmax_rule)
register_rule(*overloads("mean"))(reduce.mean_rule)
register_rule(*overloads("sum"))(reduce.sum_rule)
register_rule(*overloads("amax", "amin", "logsumexp"))(reduce.extremum_rule)
register_rule(*overloads("var", "std"))(reduce.variance_rule)
register_rule(*overloads("var_mean", "std_mean"))(reduce.variance_mean_rule)


def _dim_arg(ctx, position: int, ndim: int) -> int:
    return ctx.value(ctx.arg(position, "dim", 0)) % ndim


@register_rule(*overloads("slice"))
class SliceRule(OpRule):
    """slice(x, dim, start, end, step): bounds along a tracked dim are remapped to the kept
    channels (a step other than 1 along channels is refused)."""

    def propagate(self, ctx):
        value = ctx.value(ctx.arg(0))
        dim = _dim_arg(ctx, 1, value.dim())
        step = ctx.value(ctx.arg(4, "step", 1))
        x = ctx.chan(ctx.arg(0))
        track = x.on(dim) if isinstance(x, Chan) else None
        if track is not None and step != 1:
            ctx.freeze(track.labels, "a strided slice along channels")
        return shape._run_on_labels(ctx, "split")

    def rewrite_args(self, rctx):
        value = rctx.in_value(0)
        args = list(rctx.args) + [None] * (5 - len(rctx.args))
        dim = (args[1] if args[1] is not None else rctx.kwargs.get("dim", 0)) % value.dim()
        if dim not in rctx.in_changed_dims(0):
            return None
        keep = rctx.in_keep(0, dim)
        start, stop, _ = slice(args[2], args[3]).indices(value.shape[dim])
        args[2], args[3] = int(keep[:start].sum()), int(keep[:stop].sum())
        return tuple(a for a in args[:4]), {}


@register_rule(*overloads("select"))
def select_rule(ctx):
    """select(x, dim, index): picking one slice of a joint track (q out of (3, heads, d)) is
    fine unless units lie along that dim; picking one channel makes it a constant."""
    value = ctx.value(ctx.arg(0))
    dim = _dim_arg(ctx, 1, value.dim())
    x = ctx.chan(ctx.arg(0))
    track = x.on(dim) if isinstance(x, Chan) else None
    if track is not None and not track.single():
        ctx.store.require_uniform(track.labels, track.dims.index(dim), f"select at {ctx.where}")
    return shape._run_on_labels(ctx, "split")


@register_rule(*overloads("embedding"))
def embedding_rule(ctx):
    """embedding(weight, ids): the output's last dim holds the weight's dim-1 channels."""
    weight = ctx.chan(ctx.arg(0))
    track = weight.on(1) if isinstance(weight, Chan) else None
    if track is None or not track.single():
        return Chan()
    return Chan((Track((ctx.out.dim() - 1,), track.labels),))


@register_rule(*overloads("addmm"), torch.addmm)  # torch.addmm: GPT-2's Conv1D traced by fx
def addmm_rule(ctx):
    """addmm(bias, x, w) = bias + x @ w (GPT-2's Conv1D): x's channels are consumed with w's
    dim 0, the output's channels are w's dim 1 (and the bias's)."""
    bias, x, w = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    xc, wc, bc = ctx.chan(x), ctx.chan(w), ctx.chan(bias)
    w_in = wc.on(0) if isinstance(wc, Chan) else None
    w_out = wc.on(1) if isinstance(wc, Chan) else None
    if isinstance(xc, Chan):
        for t in xc.tracks:
            if t.dims == (1,) and w_in is not None and w_in.single():
                ctx.union(t.labels, w_in.labels)
                ctx.consume(1, 1, t.labels, 2)
            else:
                ctx.freeze(t.labels, "addmm over channels without a tracked weight")
    tracks = []
    if w_out is not None and w_out.single():
        tracks.append(Track((1,), w_out.labels))
        b = bc.on(bc_dim := ctx.value(bias).dim() - 1) if isinstance(bc, Chan) else None
        if b is not None and b.single() and b.dims == (bc_dim,):
            ctx.union(b.labels, w_out.labels)
    return merge_tracks(tracks, ctx.store)


@register_rule(*overloads("conv1d", "conv2d", "conv3d"))
class FunctionalConvRule(OpRule):
    """conv(x, weight, bias, stride, padding, dilation, groups). groups == 1: input channels
    are consumed with the weight's dim 1, output channels are the weight's dim 0. Grouped and
    depthwise: one conv group (its input and output channels) is one unit, and ``groups``
    becomes the number of kept groups. ``groups_arg``: the position of ``groups`` (8 in
    ``aten.convolution``, see :mod:`.aten_extra`)."""

    def __init__(self, groups_arg: int = 6):
        self.groups_arg = groups_arg

    def propagate(self, ctx):
        x, w, bias = ctx.arg(0), ctx.arg(1), ctx.arg(2, "bias")
        groups = ctx.value(ctx.arg(self.groups_arg, "groups", 1))
        xc, wc = ctx.chan(x), ctx.chan(w)
        xc = xc if isinstance(xc, Chan) else Chan()
        w_out = wc.on(0) if isinstance(wc, Chan) else None
        for t in xc.tracks:
            if t.dims != (1,):
                ctx.freeze(t.labels, "convolution over channels tied to another dimension")
        if w_out is None or not w_out.single():
            ctx.freeze_inputs("a convolution whose weight is not a parameter")
            return Chan()
        ndim = ctx.out.dim()
        x_in = xc.on(1)
        if groups == 1:
            w_in = wc.on(1)
            if x_in is not None and x_in.single() and w_in is not None and w_in.single():
                ctx.union(x_in.labels, w_in.labels)
                ctx.consume(0, 1, x_in.labels, ndim)
            elif x_in is not None:
                ctx.freeze(x_in.labels, "convolution input without a tracked weight")
        else:
            out_blocks = w_out.labels.view(groups, -1)
            n_in = ctx.value(x).shape[1]
            in_labels = x_in.labels if x_in is not None and x_in.single() else torch.zeros(n_in, dtype=torch.long)
            in_blocks = in_labels.view(groups, -1)
            untracked = (in_blocks == 0).any(1)
            if bool(untracked.any()):
                ctx.freeze(out_blocks[untracked], "conv group whose input channels are untracked")
            rows = torch.cat([in_blocks, out_blocks], 1)
            ctx.store.union(out_blocks[:, :1].expand_as(rows), rows)
            ctx.tag(w_out.labels, "depthwise" if in_blocks.shape[1] == 1 else "grouped")
            if in_blocks.shape[1] > 1 or out_blocks.shape[1] > 1:
                ctx.tag(w_out.labels, "unit:conv-group")
        if bias is not None and isinstance(ctx.chan(bias), Chan) and (b := ctx.chan(bias).on(0)) is not None:
            ctx.union(b.labels, w_out.labels)
        return Chan((Track((1,), w_out.labels),))

    def rewrite_args(self, rctx):
        g = self.groups_arg
        groups = rctx.args[g] if len(rctx.args) > g else rctx.kwargs.get("groups", 1)
        if groups == 1 or 1 not in rctx.out_changed_dims():
            return None
        kept = int(rctx.out_keep(1).view(groups, -1).any(1).sum())
        args = list(rctx.args)
        if len(args) > g:
            args[g] = kept
            return tuple(args), rctx.kwargs
        return tuple(args), {**rctx.kwargs, "groups": kept}


register_rule(torch.conv1d, torch.conv2d, torch.conv3d)(FunctionalConvRule)  # F.conv2d(x, weight, ...)


@register_rule(*overloads("batch_norm", "instance_norm"))
def aten_batch_norm_rule(ctx):
    """batch_norm(x, weight, bias, running_mean, running_var, training, ...): per-channel along dim 1."""
    x = ctx.passthrough(0)
    if ctx.node.target in overloads("batch_norm"):
        reduce.batch_statistics(ctx, x, bool(ctx.value(ctx.arg(5, "training", False))))
    t = x.on(1)
    if t is not None and t.single():
        layers._tie_params(ctx, t.labels, (1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var"))
        ctx.tag(t.labels, "norm")
    return x


register_rule(*overloads("group_norm"))(layers.FunctionalGroupNormRule)
register_rule(torch.ops.aten.pad.default)(reduce.PadRule)
register_rule(*overloads("pixel_shuffle"))(layers.PixelShuffleRule)
register_rule(*overloads("avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
                         "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                         "upsample_nearest1d", "upsample_nearest2d", "upsample_bilinear2d",
                         "upsample_bicubic2d"))(reduce._spatial_rule)


@register_rule(*overloads("unflatten"))
class UnflattenRule(shape.UnflattenRule):
    """unflatten(x, dim, sizes): the sizes of tracked dims become their kept counts."""

    def propagate(self, ctx):
        return shape._run_on_labels(ctx)
