"""Rewrite opaque attention modules into plain ops, so their heads become prunable units.

``nn.MultiheadAttention`` checks ``embed_dim`` against its inputs and hides its heads inside
one call. Where it is used in the common way (packed q/k/v weights, no masks, attention
weights unused) it is replaced by the same computation written with ``F.linear``, a head split
and ``F.scaled_dot_product_attention`` reading the module's own parameters, so the generic
rules see the heads and the rewriter can slice them. Other uses stay a frozen leaf.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import torch.fx as fx
import torch.nn.functional as F
from torch import nn


def _is_item(node: fx.Node, index: int) -> bool:
    return node.op == "call_function" and node.target is operator.getitem and node.args[1] == index


def _lowerable(node: fx.Node, m: nn.MultiheadAttention) -> bool:
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        return False
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    if bound.get("key_padding_mask") is not None or bound.get("attn_mask") is not None or bound.get("is_causal"):
        return False
    # only the attention output may be read (the averaged weights are not computed); an unused
    # weights item is what ``x, _ = attn(x, x, x, need_weights=False)`` leaves behind
    if not all(_is_item(u, 0) or (_is_item(u, 1) and not u.users) for u in node.users):
        return False
    return all(k in bound for k in ("query", "key", "value"))


def lower_multihead_attention(gm: fx.GraphModule) -> int:
    """Replace lowerable ``nn.MultiheadAttention`` calls in place; returns how many."""
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.MultiheadAttention):
            continue
        m = modules[node.target]
        if not _lowerable(node, m):
            continue
        names = ("query", "key", "value")
        bound = dict(zip(names, node.args))
        bound.update({k: v for k, v in node.kwargs.items() if k in names})
        g = gm.graph
        E, H = m.embed_dim, m.num_heads
        with g.inserting_before(node):
            w = g.get_attr(f"{node.target}.in_proj_weight")
            b = g.get_attr(f"{node.target}.in_proj_bias") if m.in_proj_bias is not None else None
            heads = []
            for i, name in enumerate(names):
                x = bound[name]
                if not m.batch_first:
                    x = g.call_method("transpose", (x, 0, 1))
                wi = g.call_function(operator.getitem, (w, slice(i * E, (i + 1) * E)))
                bi = g.call_function(operator.getitem, (b, slice(i * E, (i + 1) * E))) if b is not None else None
                y = g.call_function(F.linear, (x, wi, bi))
                batch = g.call_method("size", (y, 0))
                length = g.call_method("size", (y, 1))
                y = g.call_method("view", (y, batch, length, H, E // H))
                heads.append(g.call_method("transpose", (y, 1, 2)))
            attn = g.call_function(F.scaled_dot_product_attention, tuple(heads))
            merged = g.call_method("transpose", (attn, 1, 2))
            batch = g.call_method("size", (merged, 0))
            length = g.call_method("size", (merged, 1))
            merged = g.call_method("reshape", (merged, batch, length, E))
            ow = g.get_attr(f"{node.target}.out_proj.weight")
            ob = g.get_attr(f"{node.target}.out_proj.bias") if m.out_proj.bias is not None else None
            out = g.call_function(F.linear, (merged, ow, ob))
            if not m.batch_first:
                out = g.call_method("transpose", (out, 0, 1))
        for user in list(node.users):
            if _is_item(user, 0):
                user.replace_all_uses_with(out)
            g.erase_node(user)  # the output item, or the unused weights item
        g.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


#: torch's encoder layers, whose forward checks its input in Python and may take a fused fast
#: path (``torch._transformer_encoder_layer_fwd``): traced as the plain module calls below
PLAIN_TRANSFORMER = (nn.TransformerEncoderLayer, nn.TransformerEncoder)


def plain_transformer_forward(m: nn.Module, args: tuple, kwargs: dict) -> Optional[Callable[..., Any]]:
    """The eval forward of ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` as calls of
    their submodules (its attention then lowers like any ``nn.MultiheadAttention``), or None
    when masks or causality are given (the module stays one op)."""
    if len(args) != 1 or any(v is not None and v is not False for v in kwargs.values()):
        return None
    if isinstance(m, nn.TransformerEncoder):
        def encoder(src):
            for layer in m.layers:
                src = layer(src)
            return m.norm(src) if m.norm is not None else src
        return encoder

    def attention(x):
        return m.dropout1(m.self_attn(x, x, x, need_weights=False)[0])

    def layer(x):
        if m.norm_first:
            x = x + attention(m.norm1(x))
            return x + m._ff_block(m.norm2(x))
        x = m.norm1(x + attention(x))
        return m.norm2(x + m._ff_block(x))
    return layer
