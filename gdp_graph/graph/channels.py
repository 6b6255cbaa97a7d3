"""Channel labels: which element of which channel space each tensor position holds.

Every layer that creates channels (a conv's output, a parameter) creates *elements*, numbered
from 1. A tensor's channel dimensions are described by :class:`Track` objects: for one or more
of its dimensions, an integer label per position naming the element found there (0: none, e.g.
zero padding). Data-movement ops (view, permute, cat, split, indexing, ...) are handled by
running the op itself on label tensors, so index offsets, shuffles and head splits come out
right without a rule per pattern. Ops that tie channels together (a residual add) *union*
elements; a union-find over elements then yields the removable units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.utils._pytree as pytree

NULL = 0
#: dtype of the full-shape label tensors data-movement ops run on (element ids stay far below 2**31)
LABEL_DTYPE = torch.int32


@dataclass(frozen=True)
class Track:
    """Labels along ``dims`` of a tensor; ``labels.shape == [size of each dim in dims]``.

    One dim is the usual case. Several dims form a *joint* track, e.g. ``(heads, head_dim)``
    after a head split; rules later decide which of those dims is the pruning unit.
    """

    dims: tuple[int, ...]
    labels: torch.Tensor

    def shifted(self, offset: int) -> "Track":
        return Track(tuple(d + offset for d in self.dims), self.labels)

    def single(self) -> bool:
        return len(self.dims) == 1

    def elements(self) -> torch.Tensor:
        flat = self.labels.reshape(-1)
        return flat[flat != NULL]


@dataclass(frozen=True)
class Chan:
    """The channel description of one tensor: its tracks (possibly none)."""

    tracks: tuple[Track, ...] = ()

    def on(self, dim: int) -> Optional[Track]:
        """The track covering ``dim`` (single or joint), if any."""
        for t in self.tracks:
            if dim in t.dims:
                return t
        return None

    def dims(self) -> set[int]:
        return {d for t in self.tracks for d in t.dims}

    def elements(self) -> torch.Tensor:
        if not self.tracks:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([t.elements() for t in self.tracks])


UNTRACKED = Chan()


def expand_labels(track: Track, shape: Sequence[int]) -> torch.Tensor:
    """The full-shape label tensor of ``track`` for a tensor of ``shape`` (a broadcast view)."""
    view = [1] * len(shape)
    for d, size in zip(track.dims, track.labels.shape):
        view[d] = size
    order = sorted(range(len(track.dims)), key=lambda i: track.dims[i])
    labels = track.labels.permute(order) if len(order) > 1 else track.labels
    return labels.reshape(view).expand(*shape)


def infer_tracks(labels: torch.Tensor) -> tuple[list[Track], torch.Tensor]:
    """Recover tracks from a full-shape label tensor (any integer dtype; results are int64).

    A dim is part of the track when some slice along it holds two different elements. Returns
    the tracks and the elements that survive only as a constant (e.g. one channel picked by an
    integer index): those can no longer be removed where this tensor is used.
    """
    empty = torch.zeros(0, dtype=torch.long)
    if labels.numel() == 0:
        return [], empty
    # a dim of stride 0 (labels broadcast along it, still so after views and permutes) holds
    # the same labels at every position: one slice of it says everything
    for d in range(labels.dim()):
        if labels.stride(d) == 0 and labels.shape[d] > 1:
            labels = labels.narrow(d, 0, 1)
    dims = [d for d in range(labels.dim()) if labels.shape[d] > 1]
    if labels.dtype != torch.long:
        # int32 labels (what ops run on): reductions only, no full-size temporaries. Labels are
        # >= 0 and NULL is 0; a slice varies where its largest and smallest present labels differ
        lowest, highest = int(labels.amin()), int(labels.amax())
        if highest == NULL:
            return [], empty
        complete = lowest != NULL
        present = None if complete else labels != NULL
        filled = labels if complete else labels.masked_fill(~present, torch.iinfo(labels.dtype).max)
        varying = [d for d in dims if bool((filled.amin(d) < labels.amax(d)).any())]
    else:
        # int64 (index) labels: int64 amin is far slower than amax on CPU, so no min is taken
        present = labels != NULL
        complete = bool(present.all())
        if not complete and not bool(present.any()):
            return [], empty
        if complete:  # a dim varies when the tensor differs from its first slice along it
            varying = [d for d in dims if bool((labels != labels.narrow(d, 0, 1)).any())]
        else:  # a slice varies when a present label differs from its max
            varying = [d for d in dims if bool(((labels != labels.amax(d, keepdim=True)) & present).any())]
    if not varying:
        return [], torch.unique(labels if complete else labels[present]).long()
    others = [d for d in range(labels.dim()) if d not in varying]
    if not others:
        projected = labels
    elif complete:  # constant along the others: any slice will do
        projected = labels[tuple(0 if d in others else slice(None) for d in range(labels.dim()))]
    else:
        projected = labels.amax(dim=others)
    return [Track(tuple(varying), projected.to(torch.long).contiguous())], empty


def map_structure(fn, value: Any) -> Any:
    """Apply ``fn`` to every tensor in a (possibly nested) tuple/list; others become None."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return tuple(map_structure(fn, v) for v in value)
    return None


def flatten_chans(chan: Any) -> Iterable[Chan]:
    """Every :class:`Chan` in a nested channel structure (tuples, lists, dicts)."""
    return [c for c in pytree.tree_leaves(chan) if isinstance(c, Chan)]
