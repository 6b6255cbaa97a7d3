"""Rules for pooling, resizing, reductions and normalizations over a dimension."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gdp_graph.graph.channels import NULL, Chan, Track
from gdp_graph.graph.rules.registry import OpRule, register_rule

_POOL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1,
    nn.LPPool2d: 2, nn.Upsample: None, nn.UpsamplingNearest2d: 2, nn.UpsamplingBilinear2d: 2,
}
_POOL_FUNCTIONS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
    F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
    F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2,
    F.adaptive_max_pool3d: 3, F.interpolate: None, F.upsample: None, torch.max_pool2d: 2,
    torch.avg_pool1d: 1, torch.adaptive_avg_pool1d: 1, F.lp_pool2d: 2, F.lp_pool1d: 1,
}


def batch_statistics(ctx, x: Chan, training: bool) -> None:
    """batch_norm with batch statistics (``training=True``) averages over every dim but 1, so
    channels tracked on another dim are mixed into each channel's mean and variance: removing
    them changes what the kept channels compute. That is how a weight-standardized conv (NFNet's
    ``ScaledStdConv2d``: its weight reshaped to ``(1, out, fan_in)`` and normalized) reads its
    input channels, so those groups are inexact, with this op named."""
    if not training or not isinstance(x, Chan):
        return
    for t in x.tracks:
        if t.dims != (1,):
            ctx.mark_inexact(t.labels, "batch statistics (batch_norm with training=True) mix them with the other "
                                       "channels of their row, as in a weight standardized over its fan-in")


def _spatial_rule(ctx):
    """Pooling and resizing act on the trailing spatial dims: channels before them pass."""
    x = ctx.passthrough(0)
    n_spatial = _POOL_MODULES.get(type(ctx.module)) if ctx.module is not None else _POOL_FUNCTIONS.get(ctx.node.target)
    ndim = ctx.out.dim()
    first_spatial = ndim - n_spatial if n_spatial else 2
    kept = []
    for t in x.tracks:
        if any(d >= first_spatial for d in t.dims):
            ctx.freeze(t.labels, "channels along a pooled or resized dimension")
        else:
            kept.append(t)
    return Chan(tuple(kept))


register_rule(*_POOL_MODULES, *_POOL_FUNCTIONS)(_spatial_rule)


def _reduced_dims(ctx, ndim: int, dim_arg) -> list[int]:
    dims = ctx.value(dim_arg)
    if dims is None:
        return list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    return sorted(d % ndim for d in dims)


def _keepdim(ctx, position: int) -> bool:
    return bool(ctx.value(ctx.arg(position, "keepdim", False)))


def _combine_along(ctx, t: Track, axes: list[int]) -> torch.Tensor:
    """Union the elements of ``t`` along its ``axes`` (positions in ``t.dims``) and return one
    label per position of its other axes (in their order).

    A reduction or softmax over some dims of a joint track computes each output from one fiber
    along them: ResNeSt's ``x.reshape(B, radix, C, H, W).sum(dim=1)`` adds the radix splits of
    each channel, its radix softmax normalizes each channel's radix logits. Made one channel,
    a fiber is removed whole or not at all, so the op stays exact and its count along the
    reduced dims never changes (a mean's divisor included)."""
    rest = [i for i in range(len(t.dims)) if i not in axes]
    labels = t.labels.permute(rest + axes)
    kept_shape = labels.shape[:len(rest)]
    first = ctx.store.union_along(labels.reshape(-1, labels[(0,) * len(rest)].numel()), 0)
    return first.reshape(kept_shape)


def _reduce(ctx, *, exact: bool, what: str, dim_pos: int = 1, keepdim_pos: int = 2):
    x_node = ctx.arg(0, "input")
    x_value = ctx.value(x_node)
    ndim = x_value.dim()
    x = ctx.chan(x_node)
    dims = _reduced_dims(ctx, ndim, ctx.arg(dim_pos, "dim"))
    keep = _keepdim(ctx, keepdim_pos)
    out_tracks = []
    for t in x.tracks:
        reduced = [d for d in t.dims if d in dims]
        if reduced and len(reduced) < len(t.dims):  # part of a joint track: see _combine_along
            labels = _combine_along(ctx, t, [t.dims.index(d) for d in reduced])
            t = Track(tuple(d for d in t.dims if d not in dims), labels)
            reduced = []
        if reduced:
            if not t.single():
                ctx.freeze(t.labels, f"{what} over a tracked dimension tied to another")
            elif exact:
                ctx.consume(0, t.dims[0], t.labels, ndim)
            else:
                ctx.mark_inexact(t.labels, f"{what} over channels")
                ctx.member(t.labels, "consume", t.dims[0])
            continue
        if keep:
            out_tracks.append(t)
        else:
            out_tracks.append(Track(tuple(d - sum(r < d for r in dims) for d in t.dims), t.labels))
    return Chan(tuple(out_tracks))


@register_rule(torch.sum, "sum")
def sum_rule(ctx):
    """A sum over channels is exact with gates on its input (a gate site)."""
    return _reduce(ctx, exact=True, what="sum")


@register_rule(torch.mean, "mean")
def mean_rule(ctx):
    """A mean over channels divides by the channel count: removal is inexact."""
    return _reduce(ctx, exact=False, what="mean")


@register_rule(torch.amax, torch.amin, "amax", "amin", torch.logsumexp, "logsumexp", torch.prod, "prod")
def extremum_rule(ctx):
    return _reduce(ctx, exact=False, what=getattr(ctx.node.target, "__name__", str(ctx.node.target)))


@register_rule(torch.var, torch.std, "var", "std")
def variance_rule(ctx):
    pos = 3 if "correction" not in ctx.node.kwargs and len(ctx.node.args) > 3 else 2
    return _reduce(ctx, exact=False, what="variance", keepdim_pos=pos)


@register_rule(torch.var_mean, torch.std_mean)
def variance_mean_rule(ctx):
    """var_mean / std_mean: both over the same dims, as a weight standardized over its fan-in
    (BiT's ``StdConv2d``: ``torch.var_mean(w, dim=[1, 2, 3], keepdim=True)``) computes them."""
    chan = variance_rule(ctx)
    return chan, chan


@register_rule(torch.norm, "norm")
def norm_rule(ctx):
    return _reduce(ctx, exact=False, what="norm", dim_pos=2, keepdim_pos=3)


@register_rule(torch.max, torch.min, "max", "min")
def max_rule(ctx):
    """max/min: with a tensor second operand they are elementwise, with a dim a reduction."""
    second = ctx.arg(1, "dim")
    if isinstance(ctx.value(second), torch.Tensor):
        return ctx.broadcast_merge([ctx.arg(0), second], "multiply")
    if second is None and "dim" not in ctx.node.kwargs:
        return _reduce(ctx, exact=False, what="max")
    chan = _reduce(ctx, exact=False, what="max")
    return (chan, chan) if isinstance(ctx.out, tuple) else chan


def _softmax_dim(ctx) -> int:
    if ctx.module is not None:
        return ctx.module.dim
    return ctx.value(ctx.arg(1, "dim"))


@register_rule(nn.Softmax, nn.LogSoftmax, nn.Softmin, F.softmax, F.log_softmax, F.softmin,
               torch.softmax, torch.log_softmax, "softmax", "log_softmax", F.normalize)
def softmax_rule(ctx):
    """Softmax (and F.normalize) over channels renormalizes across them: inexact. Over one dim
    of a joint track each fiber along it becomes one channel (:func:`_combine_along`)."""
    x = ctx.passthrough(0)
    ndim = ctx.out.dim()
    if ctx.node.target is F.normalize:
        dim = ctx.value(ctx.arg(2, "dim", 1))
    else:
        dim = _softmax_dim(ctx)
    dim = (ndim - 1 if dim is None else dim) % ndim
    t = x.on(dim)
    if t is not None and not t.single():  # one fiber per channel of the track's other dims
        _combine_along(ctx, t, [t.dims.index(dim)])
    elif t is not None:
        ctx.mark_inexact(t.labels, f"{getattr(ctx.node.target, '__name__', ctx.node.target)} over channels")
    return x


@register_rule(F.pad)
class PadRule(OpRule):
    """Zero padding. Channels added by padding along a channel dim are new (all-zero) channels,
    so a residual add can tie them to real ones; the rewriter shrinks the pad to what is kept."""

    def propagate(self, ctx):
        src = ctx.arg(0)
        pad = ctx.value(ctx.arg(1, "pad"))
        mode = ctx.value(ctx.arg(2, "mode", "constant"))
        value = ctx.value(ctx.arg(3, "value", None))
        ndim = ctx.out.dim()
        padded = {ndim - 1 - i // 2 for i, p in enumerate(pad) if p}
        if mode != "constant" or value:
            x = ctx.passthrough(0)
            for t in x.tracks:
                if padded.intersection(t.dims):
                    ctx.freeze(t.labels, f"{mode} padding along channels")
            return x
        out = ctx.movement(lambda sub: F.pad(sub(src), pad), [src])
        tracks = []
        for t in out.tracks:
            if t.single() and t.dims[0] in padded and bool((t.labels == NULL).any()):
                holes = t.labels == NULL
                labels = t.labels.clone()
                labels[holes] = ctx.fresh(int(holes.sum()), "zero channels added by padding")
                ctx.tag(labels, "concat")
                t = Track(t.dims, labels)
            tracks.append(t)
        return Chan(tuple(tracks))

    def rewrite_args(self, rctx):
        changed = rctx.out_changed_dims()
        if not changed:
            return None
        args = list(rctx.args)
        pad = list(args[1] if len(args) > 1 else rctx.kwargs["pad"])
        ndim = rctx.out_ndim()
        for d in changed:
            i = 2 * (ndim - 1 - d)
            if i + 1 >= len(pad):
                continue
            keep = rctx.out_keep(d)
            before, after = pad[i], pad[i + 1]
            pad[i] = int(keep[:before].sum()) if before > 0 else before
            pad[i + 1] = int(keep[keep.numel() - after:].sum()) if after > 0 else after
        if len(args) > 1:
            args[1] = tuple(pad)
            return tuple(args), rctx.kwargs
        kwargs = dict(rctx.kwargs)
        kwargs["pad"] = tuple(pad)
        return tuple(args), kwargs
