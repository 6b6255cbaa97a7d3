"""Where channel tracks land after an op that only moves positions, read off its arguments.

The general path runs the op on full-shape label tensors once per track and reads the tracks
back (:meth:`~gdp_graph.graph.rules.context.RuleContext.movement`): exact for any op, but each
run materializes and reduces the whole tensor (a ConvNeXt-T's 36 permutes of 1 x 56 x 56 x 96
maps cost ~0.2 ms each). These ops only move a track's dims, or roll or flip its labels along
them: a permute, transpose or unsqueeze; a roll or flip; a view or reshape that keeps the last
dim's size (row-major order keeps the position along it) when the one track is on that dim.
Tracks whose labels hold a null, or do not vary along each of their dims, return None (the
general path reads those its own way), as does every other op.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from gdp_graph.graph.channels import NULL, Chan, Track

_VIEWS = frozenset({"view", "reshape", torch.reshape})
_PERMUTES = frozenset({"permute", torch.permute})
_TRANSPOSES = frozenset({"transpose", "swapaxes", torch.transpose})
_ROLLS = frozenset({"roll", torch.roll})
_FLIPS = frozenset({"flip", torch.flip})
_UNSQUEEZES = frozenset({"unsqueeze", torch.unsqueeze})

#: how the op moves one track: its dims in the output and its labels (None: cannot tell)
_Move = Callable[[Track], Optional[tuple[tuple[int, ...], torch.Tensor]]]


def _ints(value: Any) -> Optional[list[int]]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _renumber(mapping: Callable[[int], int]) -> _Move:
    return lambda t: (tuple(mapping(d) for d in t.dims), t.labels)


def _along(op: Callable, dims: list[int], shifts: Optional[list[int]]) -> _Move:
    """A roll (``shifts``) or flip of ``dims``: the labels of a track along them move too."""
    def move(t: Track):
        axes = [t.dims.index(d) for d in dims if d in t.dims]
        if not axes:
            return t.dims, t.labels
        if shifts is None:
            return t.dims, op(t.labels, axes)
        return t.dims, op(t.labels, [s for s, d in zip(shifts, dims) if d in t.dims], axes)
    return move


def _mover(target: Any, args: list, kwargs: dict, x: torch.Tensor, out: torch.Tensor) -> Optional[_Move]:
    """How the op moves tracks of ``x`` (``args``: its concrete arguments after the tensor)."""
    n = x.dim()
    if target in _PERMUTES and not kwargs and out.dim() == n:
        order = _ints(args[0] if len(args) == 1 else args)
        if order is None or len(order) != n:
            return None
        order = [p % n for p in order]
        return _renumber(order.index)
    if target in _TRANSPOSES and not kwargs and len(args) == 2 and _ints(args) is not None:
        a, b = (p % n for p in args)
        return _renumber(lambda d: b if d == a else a if d == b else d)
    if target in _UNSQUEEZES and len(args) + len(kwargs) == 1:
        at = args[0] if args else kwargs.get("dim")
        return _renumber(lambda d: d + 1 if at % out.dim() <= d else d) if isinstance(at, int) else None
    if target in _ROLLS:
        shifts = _ints(args[0] if args else kwargs.get("shifts"))
        dims = _ints(args[1] if len(args) > 1 else kwargs.get("dims"))
        if shifts is None or dims is None or len(shifts) != len(dims):
            return None  # no dims: a roll of the flattened tensor
        return _along(torch.roll, [d % n for d in dims], shifts)
    if target in _FLIPS:
        dims = _ints(args[0] if args else kwargs.get("dims"))
        return _along(torch.flip, [d % n for d in dims], None) if dims is not None else None
    if target in _VIEWS and not kwargs and out.shape[-1] == x.shape[-1]:
        return _renumber(lambda d: out.dim() - 1 if d == n - 1 else -1)
    return None


def _readable(labels: torch.Tensor) -> bool:
    """Whether the general path reads these labels back as they are: int64, no nulls, and
    varying along each of their dims."""
    if labels.dtype != torch.long or labels.numel() < 2 or not bool((labels != NULL).all()):
        return False
    return all(labels.shape[k] > 1 and bool((labels != labels.narrow(k, 0, 1)).any()) for k in range(labels.dim()))


def _moved(track: Track, move: _Move, out: torch.Tensor) -> Optional[Track]:
    moved = move(track)
    if moved is None or not _readable(track.labels):
        return None
    dims, labels = moved
    if any(d < 0 for d in dims) or [out.shape[d] for d in dims] != list(labels.shape):
        return None
    order = sorted(range(len(dims)), key=dims.__getitem__)  # a track's dims ascend, its labels with them
    if order != list(range(len(dims))):
        dims, labels = tuple(dims[k] for k in order), labels.permute(order).contiguous()
    return Track(dims, labels)


def moved_track(ctx) -> Optional[Chan]:
    """The output channels of a position-moving op (see the module docstring), or None."""
    node = ctx.node
    if not node.args or node.op not in ("call_method", "call_function"):
        return None
    x, out = ctx.value(node.args[0]), ctx.out
    chan = ctx.chan(node.args[0])
    if not (isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and isinstance(chan, Chan)) \
            or not chan.tracks:
        return None
    try:
        hash(node.target)
    except TypeError:
        return None
    move = _mover(node.target, [ctx.value(a) for a in node.args[1:]],
                  {k: ctx.value(v) for k, v in node.kwargs.items()}, x, out)
    if move is None or (node.target in _VIEWS and len(chan.tracks) > 1):
        return None
    tracks = [_moved(t, move, out) for t in chan.tracks]
    return Chan(tuple(tracks)) if all(t is not None for t in tracks) else None
