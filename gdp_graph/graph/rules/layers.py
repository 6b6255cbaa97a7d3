"""Rules for layers with weights: convolutions, linear, norms, embeddings, pixel shuffle."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from gdp_graph.graph.channels import NULL, Chan, Track
from gdp_graph.graph.rules.registry import OpRule, Resize, kept_slices, register_rule, register_sizes

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _other_tracks(chan: Chan, dim: int) -> list[Track]:
    return [t for t in chan.tracks if dim not in t.dims]


def _single_track(ctx, chan: Chan, dim: int, what: str):
    """The labels along ``dim`` of ``chan`` as a 1-D tensor, or None (freezing what cannot be
    handled: a joint track across the channel dim and another dim)."""
    track = chan.on(dim)
    if track is None:
        return None
    if not track.single():
        ctx.freeze(track.labels, f"{what} input channels are tied to another dimension")
        return None
    return track.labels


@register_rule(*_CONVS, *_TRANSPOSED)
class ConvRule(OpRule):
    """Conv and transposed conv: channels along dim 1.

    groups == 1: input channels are consumed (a gate site), output channels are new.
    Depthwise (groups == in_channels): each output channel follows its input channel.
    Grouped: one conv group is one unit, tying its input and output channels together.
    """

    def propagate(self, ctx):
        m = ctx.module
        x = ctx.chan(ctx.arg(0, "input"))
        for t in _other_tracks(x, 1):
            ctx.freeze(t.labels, "a convolution mixes a tracked spatial dimension")
        n_in, n_out, g = m.in_channels, m.out_channels, m.groups
        in_labels = _single_track(ctx, x, 1, "convolution")
        if in_labels is None:
            in_labels = torch.zeros(n_in, dtype=torch.long)
        out = ctx.fresh(n_out, f"{type(m).__name__} output channels")
        transposed = isinstance(m, _TRANSPOSED)
        w_out_dim, w_in_dim = (1, 0) if transposed else (0, 1)
        ndim = ctx.out.dim()
        if g == 1:
            ctx.consume(0, 1, in_labels, ndim)
        else:
            ipg, opg = n_in // g, n_out // g
            in_blocks = in_labels.view(g, ipg)
            out_blocks = out.view(g, opg)
            depthwise = ipg == 1
            untracked = (in_blocks == NULL).any(1)
            if bool(untracked.any()):
                ctx.freeze(out_blocks[untracked], "conv group whose input channels are untracked")
            # one conv group is one unit: tie every channel of row j to its first output
            # channel (nulls are skipped by union), all groups in one call
            rows = torch.cat([in_blocks, out_blocks], 1)
            ctx.store.union(out_blocks[:, :1].expand_as(rows), rows)
            ctx.tag(out, "depthwise" if depthwise else "grouped")
            if not depthwise or opg > 1:
                ctx.tag(out, "unit:conv-group")
            ctx.store.require_divisor(out, 1)
            ctx.member(in_labels, "pass", 1)
        ctx.member(out, "produce", w_out_dim if g == 1 or transposed else 0, "weight")
        if m.bias is not None:
            ctx.member(out, "param", 0, "bias")
        return Chan(tuple([Track((1,), out)]))

    def resize(self, m, rctx):
        keep_out, keep_in = rctx.out_keep(1), rctx.in_keep(0, 1)
        transposed = isinstance(m, _TRANSPOSED)
        if m.groups == 1:
            out_dim, in_dim = (1, 0) if transposed else (0, 1)
            weight = ((out_dim, keep_out), (in_dim, keep_in))
        else:  # weight [in, out/g, ...] when transposed: input rows of kept groups; else [out, in/g, ...]
            weight = ((0, keep_in if transposed else keep_out),)
        return Resize(kept_slices(m, {"weight": weight, "bias": ((0, keep_out),)}))

    def sizes(self, m, shapes):
        rows, columns = shapes["weight"][:2]  # [out, in/groups] ([in, out/groups] when transposed)
        per_group = (m.in_channels if m.transposed else m.out_channels) // m.groups
        groups = max(1, rows // per_group) if m.groups > 1 else 1
        if m.transposed:
            return {"in_channels": rows, "groups": groups, "out_channels": columns * groups}
        return {"out_channels": rows, "groups": groups, "in_channels": columns * groups}


@register_rule(nn.Linear)
class LinearRule(OpRule):
    """Linear: consumes the last dim, creates new output features; other dims pass through."""

    def propagate(self, ctx):
        m = ctx.module
        x = ctx.chan(ctx.arg(0, "input"))
        ndim = ctx.out.dim()
        last = ndim - 1
        in_labels = _single_track(ctx, x, last, "linear")
        if in_labels is not None:
            ctx.consume(0, last, in_labels, ndim)
        out = ctx.fresh(m.out_features, "Linear output features")
        ctx.member(out, "produce", 0, "weight")
        if m.bias is not None:
            ctx.member(out, "param", 0, "bias")
        return Chan(tuple(_other_tracks(x, last)) + (Track((last,), out),))

    def resize(self, m, rctx):
        last = rctx.out_ndim() - 1
        keep_out, keep_in = rctx.out_keep(last), rctx.in_keep(0, last)
        return Resize(kept_slices(m, {"weight": ((0, keep_out), (1, keep_in)), "bias": ((0, keep_out),)}))

    def sizes(self, m, shapes):
        out_features, in_features = shapes["weight"]
        return {"out_features": out_features, "in_features": in_features}


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@register_rule(*_BATCHNORMS)
class BatchNormRule(OpRule):
    """Per-channel norms: channels pass through; affine params and running stats follow."""

    def propagate(self, ctx):
        x = ctx.passthrough(0)
        t = x.on(1)
        if t is not None and t.single():
            ctx.member(t.labels, "param", 0, "weight")
            ctx.tag(t.labels, "norm")
        return x

    def resize(self, m, rctx):
        keep = rctx.out_keep(1)
        names = ("weight", "bias", "running_mean", "running_var")
        # a norm without tensors (no affine, no running stats) still has a size
        return Resize(kept_slices(m, {name: ((0, keep),) for name in names}), {"num_features": int(keep.sum())})

    def sizes(self, m, shapes):
        tensor = shapes.get("weight", shapes.get("running_mean"))
        return {} if tensor is None else {"num_features": tensor[0]}


def _tie_norm_groups(ctx, t: Track, num_groups: int, what: str) -> bool:
    """Make each norm group one unit (removing whole groups keeps group norm exact);
    False when the channels cannot be handled (and are frozen)."""
    if not t.single():
        ctx.freeze(t.labels, f"{what} channels tied to another dimension")
        return False
    blocks = t.labels.view(num_groups, -1)
    untracked = (blocks == NULL).any(1)
    if bool(untracked.any()):
        ctx.freeze(blocks[untracked], f"{what} group with untracked channels")
    ctx.store.union_along(blocks, 0)
    ctx.tag(t.labels, "norm")
    if blocks.shape[1] > 1:
        ctx.tag(t.labels, "unit:norm-group")
    return True


@register_rule(nn.GroupNorm)
class GroupNormRule(OpRule):
    """GroupNorm: one norm group is one unit (removing whole groups keeps it exact)."""

    def propagate(self, ctx):
        x = ctx.passthrough(0)
        t = x.on(1)
        if t is not None and _tie_norm_groups(ctx, t, ctx.module.num_groups, "GroupNorm"):
            ctx.member(t.labels, "param", 0, "weight")
        return x

    def resize(self, m, rctx):
        keep = rctx.out_keep(1)
        kept = int(keep.sum())
        return Resize(kept_slices(m, {"weight": ((0, keep),), "bias": ((0, keep),)}),
                      {"num_channels": kept, "num_groups": kept // (m.num_channels // m.num_groups)})

    def sizes(self, m, shapes):
        if "weight" not in shapes:
            return {}
        channels = shapes["weight"][0]
        return {"num_channels": channels, "num_groups": channels // (m.num_channels // m.num_groups)}


@register_rule(nn.LayerNorm, nn.RMSNorm)
class LayerNormRule(OpRule):
    """LayerNorm normalizes over its last dims: removing channels there is inexact."""

    def propagate(self, ctx):
        m = ctx.module
        x = ctx.passthrough(0)
        ndim = ctx.out.dim()
        normalized = range(ndim - len(m.normalized_shape), ndim)
        for t in x.tracks:
            if set(t.dims) & set(normalized):
                if len(m.normalized_shape) != 1 or not t.single():
                    ctx.freeze(t.labels, "LayerNorm over several tracked dims")
                    continue
                ctx.mark_inexact(t.labels, f"{type(m).__name__} normalizes over these channels")
                ctx.member(t.labels, "param", 0, "weight")
                ctx.tag(t.labels, "norm")
        return x

    def resize(self, m, rctx):
        keep = rctx.out_keep(rctx.out_ndim() - 1)
        return Resize(kept_slices(m, {"weight": ((0, keep),), "bias": ((0, keep),)}),
                      {"normalized_shape": (int(keep.sum()),)})

    def sizes(self, m, shapes):
        return {"normalized_shape": (shapes["weight"][0],)} if "weight" in shapes else {}


@register_rule(nn.Embedding)
class EmbeddingRule(OpRule):
    """Embedding: ids in, new feature channels out along the last dim."""

    def propagate(self, ctx):
        m = ctx.module
        ndim = ctx.out.dim()
        out = ctx.fresh(m.embedding_dim, "Embedding features")
        ctx.member(out, "produce", 1, "weight")
        return Chan((Track((ndim - 1,), out),))

    def resize(self, m, rctx):
        return Resize(kept_slices(m, {"weight": ((1, rctx.out_keep(rctx.out_ndim() - 1)),)}))

    def sizes(self, m, shapes):
        num_embeddings, embedding_dim = shapes["weight"]
        return {"num_embeddings": num_embeddings, "embedding_dim": embedding_dim}


@register_rule(nn.PixelShuffle, F.pixel_shuffle, torch.pixel_shuffle)
class PixelShuffleRule(OpRule):
    """PixelShuffle(r): the r*r input channels that form one output channel are one unit."""

    def propagate(self, ctx):
        r = ctx.module.upscale_factor if ctx.module is not None else ctx.value(ctx.arg(1, "upscale_factor"))
        x = ctx.chan(ctx.arg(0))
        t = x.on(1) if isinstance(x, Chan) else None
        if t is not None and t.single():
            ctx.store.union_along(t.labels.view(-1, r * r), 0)
            ctx.tag(t.labels, "unit:channel-block")
        src = ctx.arg(0)
        return ctx.movement(lambda sub: F.pixel_shuffle(sub(src), r), [src])


@register_rule(nn.PixelUnshuffle, F.pixel_unshuffle, torch.pixel_unshuffle)
def pixel_unshuffle_rule(ctx):
    """PixelUnshuffle moves spatial positions into channels: each input channel becomes r*r."""
    r = ctx.module.downscale_factor if ctx.module is not None else ctx.value(ctx.arg(1, "downscale_factor"))
    src = ctx.arg(0)
    return ctx.movement(lambda sub: F.pixel_unshuffle(sub(src), r), [src])


@register_rule(nn.PReLU)
class PReLURule(OpRule):
    def propagate(self, ctx):
        x = ctx.passthrough(0)
        t = x.on(1)
        if ctx.module.num_parameters > 1 and t is not None:
            ctx.member(t.labels, "param", 0, "weight")
        return x

    def resize(self, m, rctx):
        return Resize(kept_slices(m, {"weight": ((0, rctx.out_keep(1)),)}) if m.num_parameters > 1 else {})

    def sizes(self, m, shapes):
        return {"num_parameters": shapes["weight"][0]} if m.num_parameters > 1 else {}


# Hugging Face's Conv1D (GPT-2: ``x @ weight + bias``, weight [nx, nf]) is traced through; its
# forward builds the output shape from ``nf``
register_sizes("transformers.pytorch_utils.Conv1D",
               lambda m, shapes: dict(zip(("nx", "nf"), shapes["weight"])) if "weight" in shapes else {})


@register_rule(nn.MultiheadAttention)
def multihead_attention_rule(ctx):
    """nn.MultiheadAttention checks its embed dim against its inputs, so neither its inputs'
    nor its outputs' channels can change; its heads are internal. Everything touching it is
    frozen (heads of attention written with Linear + scaled_dot_product_attention are
    prunable)."""
    ctx.freeze_inputs("nn.MultiheadAttention requires its input width to equal embed_dim")
    out = ctx.out
    first = out[0] if isinstance(out, (tuple, list)) else out
    labels = ctx.fresh(first.shape[-1], "MultiheadAttention output")
    ctx.freeze(labels, "nn.MultiheadAttention output width is fixed by embed_dim")
    chan = Chan((Track((first.dim() - 1,), labels),))
    if isinstance(out, (tuple, list)):
        return (chan,) + tuple(Chan() for _ in out[1:])
    return chan


def _tie_params(ctx, labels: torch.Tensor, *param_args: tuple[int, str]) -> None:
    """Tie per-channel parameter tensors passed as arguments to the channels they scale."""
    for index, name in param_args:
        p = ctx.arg(index, name)
        chan = ctx.chan(p) if p is not None else None
        track = chan.on(0) if isinstance(chan, Chan) else None
        if track is not None and track.labels.numel() == labels.numel():
            ctx.union(labels, track.labels)


@register_rule(F.layer_norm, torch.layer_norm, F.rms_norm)
class FunctionalLayerNormRule(OpRule):
    """F.layer_norm(x, normalized_shape, weight, bias): inexact over the normalized channels."""

    def propagate(self, ctx):
        x = ctx.passthrough(0)
        shape = ctx.value(ctx.arg(1, "normalized_shape"))
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        ndim = ctx.out.dim()
        normalized = set(range(ndim - len(shape), ndim))
        for t in x.tracks:
            if not normalized.intersection(t.dims):
                continue
            if len(shape) != 1 or not t.single():
                ctx.freeze(t.labels, "layer_norm over several tracked dims")
                continue
            ctx.mark_inexact(t.labels, "layer_norm normalizes over these channels")
            ctx.tag(t.labels, "norm")
            _tie_params(ctx, t.labels, (2, "weight"), (3, "bias"))
        return x

    def rewrite_args(self, rctx):
        last = rctx.out_ndim() - 1
        if last not in rctx.out_changed_dims():
            return None
        args = list(rctx.args)
        new = (int(rctx.out_keep(last).sum()),)
        if len(args) > 1:
            args[1] = new
            return tuple(args), rctx.kwargs
        kwargs = dict(rctx.kwargs)
        kwargs["normalized_shape"] = new
        return tuple(args), kwargs


@register_rule(F.batch_norm, F.instance_norm)
def functional_batch_norm_rule(ctx):
    """F.batch_norm(x, running_mean, running_var, weight, bias): per-channel along dim 1."""
    x = ctx.passthrough(0)
    from gdp_graph.graph.rules.reduce import batch_statistics
    batch_statistics(ctx, x, bool(ctx.value(ctx.arg(5, "training", False))))
    t = x.on(1)
    if t is not None and t.single():
        _tie_params(ctx, t.labels, (1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
        ctx.tag(t.labels, "norm")
    return x


@register_rule(F.group_norm)
class FunctionalGroupNormRule(OpRule):
    """F.group_norm(x, num_groups, weight, bias): whole norm groups are units."""

    def propagate(self, ctx):
        x = ctx.passthrough(0)
        t = x.on(1)
        if t is not None and _tie_norm_groups(ctx, t, ctx.value(ctx.arg(1, "num_groups")), "group_norm"):
            _tie_params(ctx, t.labels, (2, "weight"), (3, "bias"))
        return x

    def rewrite_args(self, rctx):
        if 1 not in rctx.out_changed_dims():
            return None
        args = list(rctx.args)
        per = rctx.original_value().shape[1] // rctx.in_value(1) if len(args) > 1 else None
        kept = int(rctx.out_keep(1).sum())
        if len(args) > 1:
            args[1] = kept // per
            return tuple(args), rctx.kwargs
        kwargs = dict(rctx.kwargs)
        per = rctx.original_value().shape[1] // rctx.node.kwargs["num_groups"]
        kwargs["num_groups"] = kept // per
        return tuple(args), kwargs
