"""Rules for data-movement ops: views, permutes, concatenation, splits, indexing.

Each is propagated by running the op itself on label tensors (see
:meth:`RuleContext.movement`), so offsets, shuffles and head splits come out exactly. Rewrites
patch the size arguments that the removed channels change.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn
from torch.fx.immutable_collections import immutable_list

from gdp_graph.graph.channels import Chan, Track
from gdp_graph.graph.rules.moved import moved_track
from gdp_graph.graph.rules.registry import OpRule, Resize, register_class_rule, register_rule


#: types ``pytree`` treats as leaves, and the plain containers it rebuilds as their own type,
#: that node arguments are made of
_LEAF_TYPES = frozenset({fx.Node, int, float, bool, str, type(None), slice, type(Ellipsis)})
_SEQUENCE_TYPES = frozenset({tuple, list, immutable_list})


def _tree_map(fn, value: Any) -> Any:
    """``pytree.tree_map(fn, value)``, walking the leaves and sequences node arguments are made
    of here and anything else by pytree (its generic walk was a third of a view's propagation)."""
    kind = type(value)
    if kind in _LEAF_TYPES:
        return fn(value)
    if kind in _SEQUENCE_TYPES:
        return kind(_tree_map(fn, v) for v in value)
    if kind is dict:
        return {k: _tree_map(fn, v) for k, v in value.items()}
    return pytree.tree_map(fn, value)


def _substitute(value: Any, sub, ctx) -> Any:
    """``value`` (node arguments) with each tensor node replaced by ``sub(node)`` and every other
    node or slice by its value."""
    def leaf(a: Any) -> Any:
        if isinstance(a, fx.Node):
            concrete = ctx.value(a)
            return sub(a) if isinstance(concrete, torch.Tensor) else concrete
        return ctx.value(a) if isinstance(a, slice) else a

    return _tree_map(leaf, value)


def _tensor_inputs(ctx) -> list[fx.Node]:
    leaves = pytree.tree_leaves((ctx.node.args, tuple(ctx.node.kwargs.values())))
    return [a for a in leaves if isinstance(a, fx.Node) and isinstance(ctx.value(a), torch.Tensor)]


def _run_on_labels(ctx, kind=None, overrides=None, positionwise=(), side_by_side=None):
    node = ctx.node
    inputs = _tensor_inputs(ctx)

    def run(sub):
        args = _substitute(node.args, sub, ctx)
        kwargs = _substitute(dict(node.kwargs), sub, ctx)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            return ctx.module(*args, **kwargs)
        return node.target(*args, **kwargs)

    return ctx.movement(run, inputs, kind, overrides, positionwise, side_by_side=side_by_side)


def _all_dims_but(ctx, position: int, ndim: int) -> tuple[int, ...]:
    """Every dim except the one named by the ``dim`` argument (at ``position``, default 0)."""
    dim = ctx.value(ctx.arg(position, "dim", 0))
    if not isinstance(dim, int):
        return ()
    return tuple(d for d in range(ndim) if d != dim % ndim)


def _new_sizes(rctx, sizes: list, out_dims_offset: int = 0) -> list:
    """Replace the sizes of dims whose channel count changed with their new counts."""
    new_shape = rctx.new_out_shape()
    changed = rctx.out_changed_dims()
    out = list(sizes)
    for i, s in enumerate(sizes):
        d = i + out_dims_offset
        if d in changed and not (isinstance(s, int) and s == -1):
            out[i] = new_shape[d]
    return out


def _propagate_moved(ctx):
    """Channels of an op that moves positions: the op run on labels (or tracks moved, .moved), reorders tagged."""
    chan = moved_track(ctx) or _run_on_labels(ctx)
    x = ctx.chan(ctx.arg(0))
    if isinstance(x, Chan) and isinstance(chan, Chan):
        _tag_reorder(ctx, x, chan)
    return chan


class ViewRule(OpRule):
    """view/reshape/expand: sizes of tracked dims become the new channel counts; -1 and
    untracked (batch, spatial) sizes are kept so the model stays shape-polymorphic."""

    def propagate(self, ctx):
        return _propagate_moved(ctx)

    def rewrite_args(self, rctx):
        if not rctx.out_changed_dims():
            return None
        node = rctx.node
        args = list(rctx.args)
        if node.op == "call_function" and node.target in (torch.reshape,):
            shape = args[1]
            return (args[0], tuple(_new_sizes(rctx, list(shape)))), rctx.kwargs
        if len(args) == 2 and isinstance(args[1], fx.Node):
            return None  # a computed shape: patched where it is built (AddRule on tuples)
        if len(args) == 2 and isinstance(args[1], (list, tuple)):
            return (args[0], type(args[1])(_new_sizes(rctx, list(args[1])))), rctx.kwargs
        if "size" in rctx.kwargs or "shape" in rctx.kwargs:
            key = "size" if "size" in rctx.kwargs else "shape"
            kwargs = dict(rctx.kwargs)
            kwargs[key] = tuple(_new_sizes(rctx, list(kwargs[key])))
            return tuple(args), kwargs
        return (args[0], *_new_sizes(rctx, args[1:])), rctx.kwargs


def _tag_reorder(ctx, src: Chan, out: Chan) -> None:
    """Tag channel shuffles (a permutation) and flattens (channels spread over positions)."""
    for t in out.tracks:
        if not t.single():
            continue
        labels = t.labels
        unique = torch.unique(labels[labels != 0])
        if unique.numel() and unique.numel() < labels.numel():
            ctx.tag(unique, "flatten")
            continue
        for s in src.tracks:
            if s.single() and s.labels.numel() == labels.numel() and not torch.equal(s.labels, labels) \
                    and torch.equal(torch.sort(s.labels).values, torch.sort(labels).values):
                ctx.tag(unique, "shuffle")


register_rule("view", "reshape", "expand", torch.reshape)(ViewRule)


@register_rule(torch.flatten, "flatten", nn.Flatten)
class FlattenRule(OpRule):
    """flatten(x, start_dim, end_dim) and nn.Flatten: the arguments are dims, not sizes, so
    the rewrite has nothing to patch (``x.flatten(0, 1)`` keeps its ``1`` whatever the widths)."""

    def propagate(self, ctx):
        return _propagate_moved(ctx)


@register_rule("unflatten", torch.unflatten, nn.Unflatten)
class UnflattenRule(OpRule):
    """unflatten(x, dim, sizes) and nn.Unflatten(dim, sizes): the sizes of tracked dims become
    their kept counts (-1 and untracked sizes stay)."""

    def propagate(self, ctx):
        return _propagate_moved(ctx)

    def rewrite_args(self, rctx):
        if not rctx.out_changed_dims():
            return None
        args, kwargs = list(rctx.args), dict(rctx.kwargs)
        dim = args[1] if len(args) > 1 else kwargs["dim"]
        sizes = args[2] if len(args) > 2 else kwargs["sizes"]
        new = type(sizes)(_new_sizes(rctx, list(sizes), dim % rctx.in_ndim(0)))
        if len(args) > 2:
            args[2] = new
        else:
            kwargs["sizes"] = new
        return tuple(args), kwargs

    def resize(self, module: nn.Module, rctx) -> Resize:
        if not rctx.out_changed_dims():
            return Resize()
        sizes = _new_sizes(rctx, list(module.unflattened_size), module.dim % rctx.in_ndim(0))
        return Resize(attributes={"unflattened_size": tuple(sizes)})


@register_rule("permute", torch.permute, "transpose", torch.transpose, "swapaxes", "t", torch.t,
               "movedim", torch.movedim, "squeeze", torch.squeeze, "unsqueeze", torch.unsqueeze,
               "flip", torch.flip, "roll", torch.roll, "repeat", "expand_as", "view_as", "reshape_as")
class PermuteRule(OpRule):
    """Ops that move or repeat positions without taking a channel count as an argument."""

    def propagate(self, ctx):
        return _propagate_moved(ctx)


@register_rule(torch.cat, torch.concat, torch.concatenate, torch.stack)
class CatRule(OpRule):
    """Concatenation: each input's channels keep their own identity at an offset."""

    def propagate(self, ctx):
        inputs = _tensor_inputs(ctx)
        chans = {inp.name: (c if isinstance(c := ctx.chan(inp), Chan) else Chan()) for inp in inputs}
        tracked = {t.dims[0] for c in chans.values() for t in c.tracks if t.single()}
        overrides = {}
        for inp in inputs:
            # channels of an untracked input still sit next to tracked ones: give them frozen
            # elements, so a shuffle or reshape downstream cannot shrink them with the others
            c, shape = chans[inp.name], ctx.value(inp).shape
            extra = []
            for dim in sorted(tracked):
                if c.on(dim) is None and dim < len(shape) and shape[dim] > 0:
                    fresh = ctx.fresh(shape[dim], "channels of an untracked concatenation input")
                    ctx.freeze(fresh, "channels concatenated from an untracked input")
                    extra.append(Track((dim,), fresh))
            if extra:
                overrides[inp.name] = Chan(c.tracks + tuple(extra))
        same_rank = isinstance(ctx.out, torch.Tensor) and all(ctx.value(i).dim() == ctx.out.dim() for i in inputs)
        positionwise = _all_dims_but(ctx, 1, ctx.out.dim()) if same_rank else ()  # not stack
        joined = ctx.value(ctx.arg(1, "dim", 0))
        side_by_side = joined % ctx.out.dim() if same_rank and isinstance(joined, int) else None
        chan = _run_on_labels(ctx, overrides=overrides, positionwise=positionwise, side_by_side=side_by_side)
        for inp in inputs:
            c = overrides.get(inp.name) or ctx.chan(inp)
            if isinstance(c, Chan):
                for t in c.tracks:
                    ctx.tag(t.labels, "concat")
        return chan


def _split_dim(rctx, default=0) -> int:
    node = rctx.node
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else default)
    return dim % rctx.in_ndim(0)


@register_rule("split", torch.split, "chunk", torch.chunk, "tensor_split", torch.tensor_split)
class SplitRule(OpRule):
    """split/chunk: new piece sizes are the kept counts of each original piece (chunk becomes
    split when the pieces stop being equal)."""

    def propagate(self, ctx):
        chan = moved_track(ctx) or _run_on_labels(ctx)
        x = ctx.chan(ctx.arg(0))
        if isinstance(x, Chan):
            for t in x.tracks:
                ctx.tag(t.labels, "split")
        return chan

    def rewrite_args(self, rctx):
        dim = _split_dim(rctx)
        if dim not in rctx.in_changed_dims(0):
            return None
        keep = rctx.in_keep(0, dim)
        pieces = [v.shape[dim] for v in rctx.original_value()]
        sizes, start = [], 0
        for p in pieces:
            sizes.append(int(keep[start:start + p].sum()))
            start += p
        rctx.replace_target(torch.split)
        return (rctx.args[0], sizes), {"dim": dim}


@register_rule("unbind", torch.unbind)
def unbind_rule(ctx):
    return _run_on_labels(ctx)


@register_rule("narrow", torch.narrow)
class NarrowRule(OpRule):
    def propagate(self, ctx):
        return _run_on_labels(ctx, "split")

    def rewrite_args(self, rctx):
        args = list(rctx.args)
        dim = args[1] % rctx.in_ndim(0)
        if dim not in rctx.in_changed_dims(0):
            return None
        keep = rctx.in_keep(0, dim)
        start, length = args[2], args[3]
        new_start = int(keep[:start].sum())
        new_length = int(keep[start:start + length].sum())
        return (args[0], args[1], new_start, new_length), rctx.kwargs


@register_rule(operator.getitem)
class GetItemRule(OpRule):
    """Indexing: a tuple's element, or slices of a tensor (slice bounds are remapped)."""

    def propagate(self, ctx):
        src = ctx.arg(0)
        value = ctx.value(src)
        if not isinstance(value, torch.Tensor):
            chan = ctx.chan(src)
            index = ctx.value(ctx.arg(1))
            if isinstance(chan, tuple) and isinstance(index, int):
                return chan[index]
            if isinstance(chan, dict):  # a dict or ModelOutput field
                return chan.get(index) if isinstance(index, str) else _field_by_identity(ctx, chan, value, index)
            return None
        index = ctx.value(ctx.arg(1))
        parts = index if isinstance(index, tuple) else (index,)
        x = ctx.chan(src)
        tracked = x.dims() if isinstance(x, Chan) else set()
        for dim, part in _index_dims(parts, value.dim()):
            if dim not in tracked or _plain_slice(part):
                continue
            track = x.on(dim)
            if isinstance(part, int) and not track.single():
                # picking q out of a (3, heads, head_dim) track: fine unless units lie along it
                ctx.store.require_uniform(track.labels, track.dims.index(dim), f"integer index at {ctx.where}")
            elif not isinstance(part, int):
                ctx.freeze(track.labels, "indexing along channels with a step or index tensor")
        return _run_on_labels(ctx, "split")

    def rewrite_args(self, rctx):
        value = rctx.in_value(0)
        if not isinstance(value, torch.Tensor):
            return None
        changed = rctx.in_changed_dims(0)
        if not changed:
            return None
        index = rctx.args[1]
        parts = list(index) if isinstance(index, tuple) else [index]
        new_parts = list(parts)
        # bounds as they were on the example inputs (they may be computed from shapes)
        original = fx.node.map_arg(rctx.node.args[1], lambda n: rctx.in_value_of(n))
        concrete = list(original) if isinstance(original, tuple) else [original]
        for (dim, part), pos in zip(_index_dims(concrete, value.dim()), _index_positions(concrete, value.dim())):
            if dim in changed and isinstance(part, slice):
                keep = rctx.in_keep(0, dim)
                start, stop, _ = part.indices(value.shape[dim])
                new_parts[pos] = slice(int(keep[:start].sum()), int(keep[:stop].sum()))
        new_index = tuple(new_parts) if isinstance(index, tuple) else new_parts[0]
        return (rctx.args[0], new_index), rctx.kwargs


def _field_by_identity(ctx, chan: dict, container: Any, index: Any) -> Any:
    """``output[0]`` on a ModelOutput: find the field holding that very tensor."""
    try:
        picked = container[index]
    except Exception:  # noqa: BLE001 - not indexable that way: nothing to follow
        return None
    items = container.items() if isinstance(container, dict) else ()
    return next((chan.get(k) for k, v in items if v is picked), None)


def _plain_slice(part) -> bool:
    return isinstance(part, slice) and part.step in (None, 1) and not isinstance(part.start, torch.Tensor)


def _index_dims(parts, ndim):
    """(tensor dim, index part) for each part that addresses an input dimension."""
    return [(d, p) for d, p, _ in _walk_index(parts, ndim)]


def _index_positions(parts, ndim):
    return [pos for _, _, pos in _walk_index(parts, ndim)]


def _walk_index(parts, ndim):
    n_real = sum(1 for p in parts if p is not None and p is not Ellipsis)
    out = []
    dim = 0
    for pos, p in enumerate(parts):
        if p is None:
            continue
        if p is Ellipsis:
            dim += ndim - n_real
            continue
        out.append((dim, p, pos))
        dim += 1
    return out


@register_rule("size", "dim", "numel", getattr)
def query_rule(ctx):
    """Shape queries produce no tensors (the rewriter pins channel sizes to their originals);
    ``output.logits`` reads a field of a dataclass output."""
    chan = ctx.chan(ctx.arg(0))
    if isinstance(chan, dict) and ctx.node.target is getattr:
        return chan.get(ctx.value(ctx.arg(1)))
    return None


def _is_output_container(cls: type) -> bool:
    return dataclasses.is_dataclass(cls) or issubclass(cls, (dict, tuple))


@register_class_rule(_is_output_container)
def container_rule(ctx):
    """A dataclass, ``ModelOutput`` or named tuple built from tensors: its fields keep their
    channels (so what reaches the model output through it is frozen)."""
    cls = ctx.node.target
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else \
        list(getattr(cls, "_fields", ()))
    chans = {str(i if i >= len(names) else names[i]): ctx.chan(a) for i, a in enumerate(ctx.node.args)}
    chans.update({k: ctx.chan(v) for k, v in ctx.node.kwargs.items()})
    return chans
