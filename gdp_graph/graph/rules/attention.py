"""Rules for matrix products and attention.

In ``q @ k.transpose(-2, -1)`` the contracted head_dim of q and k is tied position by position,
and when the contracted channels share a track with a batch dim (the heads dim after a head
split) every channel of a head is tied into one unit: removing a whole head keeps attention
exact, removing part of one does not.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.nn.functional as F

from gdp_graph.graph.channels import Chan, Track
from gdp_graph.graph.rules.context import merge_tracks
from gdp_graph.graph.rules.registry import register_rule


class _Operand:
    """Tracks of one matmul operand, sorted into contraction, free and batch parts."""

    def __init__(self, ctx, node, k_dim: int, free_dim: int, out_free_dim: int, out_ndim: int):
        self.ctx = ctx
        value = ctx.value(node)
        self.ndim = value.dim()
        self.offset = out_ndim - self.ndim
        self.contraction: Optional[torch.Tensor] = None
        self.projected = False
        self.out_tracks: list[Track] = []
        chan = ctx.chan(node)
        chan = chan if isinstance(chan, Chan) else Chan()
        k_dim %= self.ndim
        free_dim %= self.ndim
        for t in chan.tracks:
            dims = set(t.dims)
            batch = [d for d in t.dims if d not in (k_dim, free_dim)]
            if dims == {k_dim}:
                self.contraction = t.labels
            elif dims == {free_dim}:
                self.out_tracks.append(Track((out_free_dim,), t.labels))
            elif free_dim not in dims and k_dim in dims and len(batch) == 1:
                per_batch = ctx.store.union_along(t.labels, t.dims.index(batch[0]))
                ctx.tag(t.labels, "attention")
                ctx.tag(t.labels, "unit:head")
                self.out_tracks.append(Track((batch[0] + self.offset,), per_batch))
                self.projected = True
            elif k_dim not in dims and free_dim not in dims:
                self.out_tracks.append(t.shifted(self.offset))
            elif k_dim not in dims and len(batch) == 1:
                # (heads, free) joint track: keep it joint, the heads dim ties to the other side
                dims = tuple(d + self.offset if d != free_dim else out_free_dim for d in t.dims)
                self.out_tracks.append(Track(dims, t.labels))
            else:
                ctx.freeze(t.labels, "matrix product over channels tied to several dimensions")


def _contract(ctx, a, b, *, a_k: int, b_k: int, b_free: int, site_arg: int, exact_without_heads: bool):
    out_ndim = ctx.out.dim()
    left = _Operand(ctx, a, a_k, -2, out_ndim - 2, out_ndim)
    right = _Operand(ctx, b, b_k, b_free, out_ndim - 1, out_ndim)
    ka, kb = left.contraction, right.contraction
    if ka is not None and kb is not None and ka.numel() == kb.numel():
        ctx.union(ka, kb)
        ctx.consume(site_arg, left.ndim - 1, ka, left.ndim)
        if not exact_without_heads:
            ctx.mark_inexact(ka, "scaled_dot_product_attention scales by the channel count")
    else:
        for labels in (ka, kb):
            if labels is not None:
                ctx.freeze(labels, "contracted with an operand whose channels are untracked")
    return left.out_tracks + right.out_tracks


@register_rule(operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm")
def matmul_rule(ctx):
    """Batched matrix product: contraction channels tie (a gate site on the left operand)."""
    a, b = ctx.arg(0), ctx.arg(1, "other")
    va, vb = ctx.value(a), ctx.value(b)
    if va.dim() < 2 or vb.dim() < 2:
        ctx.freeze_inputs("matrix product with a vector operand")
        return Chan()
    tracks = _contract(ctx, a, b, a_k=-1, b_k=-2, b_free=-1, site_arg=0, exact_without_heads=True)
    return merge_tracks(tracks, ctx.store, "attention")


@register_rule(F.scaled_dot_product_attention)
def sdpa_rule(ctx):
    """scaled_dot_product_attention(q, k, v): q/k tie per head, v's channels and heads flow out."""
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    explicit_scale = ctx.value(ctx.arg(6, "scale", None)) is not None
    out_ndim = ctx.out.dim()
    scores = _contract(ctx, q, k, a_k=-1, b_k=-1, b_free=-2, site_arg=0, exact_without_heads=explicit_scale)
    # the scores' free dims (L, S) hold tokens, never channels
    head_tracks = []
    for t in scores:
        if out_ndim - 1 in t.dims or out_ndim - 2 in t.dims:
            ctx.freeze(t.labels, "channels along the token dims of attention")
        else:
            head_tracks.append(t)
    values = _Operand(ctx, v, -2, -1, out_ndim - 1, out_ndim)
    if values.contraction is not None:
        ctx.freeze(values.contraction, "channels along the token dim of attention values")
    mask = ctx.arg(3, "attn_mask")
    if mask is not None and isinstance(ctx.chan(mask), Chan) and ctx.chan(mask).tracks:
        ctx.freeze(ctx.chan(mask), "a tracked attention mask")
    for t in head_tracks + values.out_tracks:
        ctx.tag(t.labels, "attention")
    return merge_tracks(head_tracks + values.out_tracks, ctx.store, "attention")


@register_rule(F.linear)
def functional_linear_rule(ctx):
    """F.linear(x, weight, bias): like nn.Linear with the weight given as a tensor."""
    x, w = ctx.arg(0, "input"), ctx.arg(1, "weight")
    out_ndim = ctx.out.dim()
    xc, wc = ctx.chan(x), ctx.chan(w)
    last = ctx.value(x).dim() - 1
    tracks = []
    if isinstance(xc, Chan):
        for t in xc.tracks:
            if t.dims == (last,):
                w_in = wc.on(1) if isinstance(wc, Chan) else None
                if w_in is not None and w_in.single():
                    ctx.union(t.labels, w_in.labels)
                    ctx.consume(0, last, t.labels, out_ndim)
                else:
                    ctx.freeze(t.labels, "F.linear with an untracked weight")
            elif last in t.dims:
                ctx.freeze(t.labels, "F.linear over channels tied to another dim")
            else:
                tracks.append(t)
    w_out = wc.on(0) if isinstance(wc, Chan) else None
    if w_out is not None and w_out.single():
        tracks.append(Track((out_ndim - 1,), w_out.labels))
    bias = ctx.arg(2, "bias")
    if bias is not None and isinstance(ctx.chan(bias), Chan):
        b = ctx.chan(bias).on(0)
        if b is not None and w_out is not None:
            ctx.union(b.labels, w_out.labels)
    return merge_tracks(tracks, ctx.store)
