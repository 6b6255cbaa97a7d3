"""``torch.einsum`` of two operands, the attention products of code written with it
(``torch.einsum('b h i d, b h j d -> b h i j', q, k)``): the matrix-product rule read off the
equation's letters.

A letter of both operands and the output is a batch dim (their tracks tie position by
position); a letter of one operand and the output is free (its track flows out); a letter of
both operands missing from the output is contracted. A contracted channel dim of its own ties
the two sides and is a gate site on the first operand (which must be a positional argument:
``aten.einsum`` takes its operands in a list, where no gate can go); contracted together with a
batch dim (a head's channels), it makes every channel of that batch index one unit, as for
``q @ k.transpose(-2, -1)``. The equation does not depend on sizes: nothing to rewrite.
"""

from __future__ import annotations

from typing import Optional

import torch

from gdp_graph.graph.channels import Chan, Track
from gdp_graph.graph.rules.context import merge_tracks
from gdp_graph.graph.rules.registry import register_rule

_ELLIPSIS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # stand-ins for the dims '...' covers (equations use lowercase)


def _letters(equation: str, ndims: list[int]) -> Optional[tuple[list[str], str]]:
    """Each operand's letters and the output's, '...' spelled out; None if not understood."""
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(ndims):
        return None
    spans = {n - len(t.replace("...", "")) for t, n in zip(terms, ndims) if "..." in t}
    if len(spans) > 1 or any(not t.replace("...", "").isalpha() for t in terms):
        return None
    fill = _ELLIPSIS[:spans.pop()] if spans else ""
    terms = [t.replace("...", fill) for t in terms]
    if not arrow:
        counts = "".join(terms)
        output = fill + "".join(sorted(c for c in set(counts) if counts.count(c) == 1 and c not in fill))
    output = output.replace("...", fill)
    if any(len(t) != n or len(set(t)) != n for t, n in zip(terms, ndims)):
        return None
    return terms, output


def _operand_tracks(ctx, chan: Chan, term: str, other: str, output: str, arg: Optional[int]) -> list[Track]:
    """The output tracks of one operand's tracks (see the module docstring); a contracted
    channel dim of its own is consumed here when ``arg`` (its position) is given."""
    out: list[Track] = []
    for t in chan.tracks:
        letters = [term[d] for d in t.dims]
        contracted = [c for c in letters if c not in output]
        if not contracted:
            out.append(Track(tuple(output.index(c) for c in letters), t.labels))
        elif any(c not in other for c in contracted):
            ctx.freeze(t.labels, "einsum sums over channels of one operand")
        elif len(letters) == 1:
            if arg is not None:
                ctx.consume(arg, t.dims[0], t.labels, len(term))
        elif len(contracted) == 1 and len(letters) == 2:  # (heads, head_dim): one unit per head
            batch = next(c for c in letters if c in output)
            per_batch = ctx.store.union_along(t.labels, letters.index(batch))
            ctx.tag(t.labels, "attention")
            ctx.tag(t.labels, "unit:head")
            out.append(Track((output.index(batch),), per_batch))
        else:
            ctx.freeze(t.labels, "einsum over channels tied to several dimensions")
    return out


def _tie_contracted(ctx, chans: list[Chan], terms: list[str], output: str, listed: bool) -> None:
    """A channel dim contracted on its own ties to the other operand's at that letter."""
    for side in (0, 1):
        term, other = terms[side], terms[1 - side]
        for t in chans[side].tracks:
            letter = term[t.dims[0]]
            if len(t.dims) != 1 or letter in output or letter not in other:
                continue
            match = chans[1 - side].on(other.index(letter))
            if match is None or not match.single():
                ctx.freeze(t.labels, "contracted with an operand whose channels are untracked")
            elif listed:
                ctx.freeze(t.labels, "einsum contracts channels of operands given in a list (no gate site)")
            elif side == 0:
                ctx.union(t.labels, match.labels)


@register_rule(torch.einsum, *(getattr(torch.ops.aten.einsum, o) for o in torch.ops.aten.einsum.overloads()))
def einsum_rule(ctx):
    """Two-operand einsum: the products of attention, contractions tied and gated."""
    listed = len(ctx.node.args) == 2 and isinstance(ctx.node.args[1], (list, tuple))
    operands = list(ctx.node.args[1]) if listed else list(ctx.node.args[1:])
    values = [ctx.value(a) for a in operands]
    parsed = _letters(ctx.value(ctx.arg(0)), [v.dim() for v in values]) \
        if len(operands) == 2 and all(isinstance(v, torch.Tensor) for v in values) else None
    if parsed is None:
        ctx.freeze_inputs("an einsum other than of two operands with a plain equation")
        return Chan()
    terms, output = parsed
    chans = [c if isinstance(c := ctx.chan(a), Chan) else Chan() for a in operands]
    _tie_contracted(ctx, chans, terms, output, listed)
    tracks = _operand_tracks(ctx, chans[0], terms[0], terms[1], output, None if listed else 1) + \
        _operand_tracks(ctx, chans[1], terms[1], terms[0], output, None)
    return merge_tracks(tracks, ctx.store, "attention")
