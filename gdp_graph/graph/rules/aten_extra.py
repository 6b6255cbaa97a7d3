"""More ATen rules: transposed convolutions, ``constant_pad_nd`` and advanced indexing.

``torch.export`` spells ``nn.ConvTranspose2d`` as ``aten.conv_transpose2d.input`` (and
``aten.convolution`` with ``transposed=True`` once decomposed), ``F.pad`` as ``aten.pad`` (or
``aten.constant_pad_nd`` when decomposed or called directly) and ``table[index]`` as
``aten.index.Tensor``. Kept apart from :mod:`.aten` only to keep each module short; registered
the same way (imported by :mod:`gdp_graph.graph.rules`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gdp_graph.graph.channels import NULL, Chan, Track
from gdp_graph.graph.rules import reduce
from gdp_graph.graph.rules.aten import FunctionalConvRule, overloads
from gdp_graph.graph.rules.registry import OpRule, register_rule


@register_rule(*overloads("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"))
class ConvTransposeRule(FunctionalConvRule):
    """conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation), the
    weight laid out [in, out/groups, *kernel]. groups == 1: input channels are consumed with the
    weight's dim 0, output channels are its dim 1. Grouped and depthwise: one conv group (its
    input channels, the weight's rows of that group, its output channels) is one unit and
    ``groups`` becomes the number of kept groups (the rewrite of :class:`FunctionalConvRule`);
    the weight's dim 1 (out/groups, shared by every group) keeps its size, so the output
    channels get elements of their own."""

    def propagate(self, ctx):
        x, w, bias = ctx.arg(0), ctx.arg(1), ctx.arg(2, "bias")
        groups = ctx.value(ctx.arg(self.groups_arg, "groups", 1))
        xc, wc = ctx.chan(x), ctx.chan(w)
        xc = xc if isinstance(xc, Chan) else Chan()
        wc = wc if isinstance(wc, Chan) else Chan()
        for t in xc.tracks:
            if t.dims != (1,):
                ctx.freeze(t.labels, "transposed convolution over channels tied to another dimension")
        w_in, w_out = wc.on(0), wc.on(1)
        if w_in is None or not w_in.single() or (w_out is not None and not w_out.single()):
            ctx.freeze_inputs("a transposed convolution whose weight is not a parameter")
            return Chan()
        ndim = ctx.out.dim()
        x_in = xc.on(1)
        x_in = x_in if x_in is not None and x_in.single() else None
        if groups == 1:
            if x_in is not None:
                ctx.union(x_in.labels, w_in.labels)
                ctx.consume(0, 1, x_in.labels, ndim)
            if w_out is None:  # a single output channel: nothing to track
                return Chan()
            out = w_out.labels
        else:
            if x_in is not None:
                ctx.union(x_in.labels, w_in.labels)  # the weight's rows are the input channels
            x_labels = x_in.labels if x_in is not None else torch.zeros(ctx.value(x).shape[1], dtype=torch.long)
            out = ctx.fresh(ctx.out.shape[1], "transposed convolution output channels")
            in_blocks, out_blocks = w_in.labels.view(groups, -1), out.view(groups, -1)
            untracked = (x_labels.view(groups, -1) == NULL).any(1)
            if bool(untracked.any()):
                ctx.freeze(out_blocks[untracked], "conv group whose input channels are untracked")
            rows = torch.cat([in_blocks, out_blocks], 1)
            ctx.store.union(out_blocks[:, :1].expand_as(rows), rows)
            ctx.tag(out, "depthwise" if in_blocks.shape[1] == 1 else "grouped")
            if in_blocks.shape[1] > 1 or out_blocks.shape[1] > 1:
                ctx.tag(out, "unit:conv-group")
        b = ctx.chan(bias) if bias is not None else None
        if isinstance(b, Chan) and (bt := b.on(0)) is not None and bt.single():
            ctx.union(bt.labels, out)
        return Chan((Track((1,), out),))


@register_rule(*overloads("convolution"))
class ConvolutionRule(OpRule):
    """convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding,
    groups), what decompositions make of every convolution: the ``transposed`` flag picks the
    rule of ``conv2d`` or of ``conv_transpose2d`` (``groups`` read at position 8)."""

    def __init__(self):
        self.plain = FunctionalConvRule(groups_arg=8)
        self.transposed = ConvTransposeRule(groups_arg=8)

    def _pick(self, node) -> FunctionalConvRule:
        flag = node.args[6] if len(node.args) > 6 else node.kwargs.get("transposed", False)
        return self.transposed if flag else self.plain

    def propagate(self, ctx):
        return self._pick(ctx.node).propagate(ctx)

    def rewrite_args(self, rctx):
        return self._pick(rctx.node).rewrite_args(rctx)


@register_rule(*overloads("constant_pad_nd"))
class ConstantPadRule(reduce.PadRule):
    """constant_pad_nd(x, pad, value): ``pad`` pairs address the trailing dims, last dim first.
    Channels along unpadded dims (the common case: only spatial dims padded) pass through.
    Channels added along a channel dim are new elements: with value 0 they are zero channels
    (removable, like :class:`~gdp_graph.graph.rules.reduce.PadRule`'s), with another value
    constant channels, frozen. Cropping (a negative pad) along channels, or padding channels
    tied to another dim, freezes them. The rewrite shrinks the pad to the kept channels."""

    def propagate(self, ctx):
        src = ctx.arg(0)
        pad = [int(p) for p in ctx.value(ctx.arg(1, "pad"))]
        fill = ctx.value(ctx.arg(2, "value", 0))
        ndim = ctx.out.dim()
        padded = {ndim - 1 - i // 2 for i, p in enumerate(pad) if p}
        cropped = {ndim - 1 - i // 2 for i, p in enumerate(pad) if p < 0}
        x = ctx.passthrough(0)
        for t in x.tracks:
            if cropped.intersection(t.dims):
                ctx.freeze(t.labels, "cropping (a negative pad) along channels")
        out = ctx.movement(lambda sub: F.pad(sub(src), pad), [src])
        tracks = []
        for t in out.tracks:
            holes = t.labels == NULL
            if padded.intersection(t.dims) and bool(holes.any()):
                labels = t.labels.clone()
                labels[holes] = ctx.fresh(int(holes.sum()), "channels added by padding")
                if not t.single():
                    ctx.freeze(labels, "padding along channels tied to another dimension")
                elif fill:
                    ctx.freeze(labels[holes], f"channels padded with the constant {fill}")
                ctx.tag(labels, "concat")
                t = Track(t.dims, labels)
            tracks.append(t)
        return Chan(tuple(tracks))


def _index_tensor_rule(ctx):
    """index(x, indices): advanced indexing, e.g. Swin's ``table[relative_position_index]``.
    Entry k of ``indices`` addresses dim k of x (``None``: the whole dim; a boolean mask: as many
    dims as it has). Channels along dims no index addresses pass through, moved to where advanced
    indexing puts them; channels along an indexed dim are picked by data: frozen."""
    src = ctx.arg(0)
    x = ctx.chan(src)
    x = x if isinstance(x, Chan) else Chan()
    concrete, indexed, dim = [], set(), 0
    for entry in ctx.arg(1, "indices"):
        value = ctx.value(entry)
        concrete.append(value)
        if value is None:
            dim += 1
            continue
        ctx.freeze(ctx.chan(entry), "channels used as indices")
        span = value.dim() if value.dtype in (torch.bool, torch.uint8) else 1
        indexed.update(range(dim, dim + span))
        dim += span
    for t in x.tracks:
        if indexed.intersection(t.dims):
            ctx.freeze(t.labels, "indexing along channels with an index tensor")
    # the op itself on labels, with the index tensors' real values (not label stand-ins)
    return ctx.movement(lambda sub: ctx.node.target(sub(src), concrete), [src])


register_rule(torch.ops.aten.index.Tensor, torch.ops.aten.index.Tensor_hacked_twin,
              torch.ops.aten._unsafe_index.Tensor, torch.ops.aten._unsafe_index.Tensor_hacked_twin)(_index_tensor_rule)
