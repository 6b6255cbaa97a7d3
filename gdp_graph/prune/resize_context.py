"""What a rule's ``resize`` and ``rewrite_args`` hooks see of one node: its original values and
channels, and which of its positions the plan keeps."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.channels import UNTRACKED, Chan
from gdp_graph.graph.groups import Member

Members = Sequence[tuple[torch.Tensor, Member]]


def members_by_node(members: Members) -> dict[str, list[tuple[torch.Tensor, Member]]]:
    """The members the rules recorded (``ctx.member``), by node name."""
    out: dict[str, list[tuple[torch.Tensor, Member]]] = {}
    for labels, member in members:
        out.setdefault(member.node, []).append((labels, member))
    return out


def kept_along(grid: torch.Tensor, k: int) -> torch.Tensor:
    """Which positions along the ``k``-th dim of a joint track's keep grid survive (any kept)."""
    return grid if grid.dim() == 1 else grid.movedim(k, 0).reshape(grid.shape[k], -1).any(1)


def chan_slices(chan: Any, keep: torch.Tensor) -> tuple[tuple[int, torch.Tensor], ...]:
    """``(dim, kept indices)`` of a tensor with channels ``chan``, for the dims that lose some."""
    if not isinstance(chan, Chan):
        return ()
    out = []
    for track in chan.tracks:
        grid = keep[track.labels]
        for k, d in enumerate(track.dims[:1] if grid.dim() == 1 else track.dims):
            along = kept_along(grid, k)
            if not bool(along.all()):
                out.append((d, along.nonzero().flatten()))
    return tuple(out)


class ResizeContext:
    """What a rule's hooks see: the original node, its new args, and keep masks."""

    def __init__(self, node: fx.Node, args: tuple, kwargs: dict, analysis: Analysis, keep: torch.Tensor,
                 members: Members = ()):
        self.node = node
        self.args = args
        self.kwargs = kwargs
        self._analysis = analysis
        self._keep = keep
        self._values = analysis.traced.values
        self._members = members
        self.new_target: Optional[Callable] = None

    # -- values and shapes ----------------------------------------------------------------------
    def original_value(self) -> Any:
        return self._values[self.node.name]

    def in_value(self, i: int) -> Any:
        a = self.node.args[i]
        return self._values[a.name] if isinstance(a, fx.Node) else a

    def for_node(self, node: fx.Node) -> "ResizeContext":
        """The context of another node of the original graph (e.g. the view a shape feeds)."""
        return ResizeContext(node, node.args, node.kwargs, self._analysis, self._keep)

    def in_value_of(self, node: fx.Node) -> Any:
        """The value any node of the original graph had on the example inputs."""
        return self._values[node.name]

    def in_ndim(self, i: int) -> int:
        return self.in_value(i).dim()

    def out_ndim(self) -> int:
        return self.original_value().dim()

    # -- keep masks -----------------------------------------------------------------------------
    def keep_of(self, labels: torch.Tensor) -> torch.Tensor:
        return self._keep[labels]

    def chan_keep(self, chan: Any, dim: int, size: int) -> torch.Tensor:
        track = chan.on(dim) if isinstance(chan, Chan) else None
        if track is None:
            return torch.ones(size, dtype=torch.bool)
        return kept_along(self.keep_of(track.labels), track.dims.index(dim))

    def out_keep(self, dim: int) -> torch.Tensor:
        value = self.original_value()
        value = value[0] if isinstance(value, (tuple, list)) else value
        return self.chan_keep(self._out_chan(), dim % value.dim(), value.shape[dim])

    def out_kept(self, dim: int) -> torch.Tensor:
        """The kept indices along ``dim`` of the output (for a :class:`Resize`)."""
        return self.out_keep(dim).nonzero().flatten()

    def in_keep(self, i: int, dim: int) -> torch.Tensor:
        a = self.node.args[i]
        value = self.in_value(i)
        chan = a.meta.get("channels", UNTRACKED) if isinstance(a, fx.Node) else UNTRACKED
        return self.chan_keep(chan, dim % value.dim(), value.shape[dim])

    def member_slices(self) -> dict[str, tuple[tuple[int, torch.Tensor], ...]]:
        """The default ``resize``: each tensor named by a member the rule recorded for this node
        (``ctx.member(labels, role, dim, "weight")``) keeps its labels' kept positions along
        ``dim``."""
        found: dict[str, dict[int, torch.Tensor]] = {}
        for labels, member in self._members:
            if member.param and member.role in ("param", "produce"):
                kept = self._keep[labels]
                if not bool(kept.all()):
                    found.setdefault(member.param, {})[member.dim] = kept.nonzero().flatten()
        return {name: tuple(dims.items()) for name, dims in found.items()}

    def _out_chan(self) -> Any:
        chan = self.node.meta.get("channels", UNTRACKED)
        return chan[0] if isinstance(chan, tuple) else chan

    def _changed(self, chan: Any, shape) -> set[int]:
        if not isinstance(chan, Chan):
            return set()
        return {d for d in chan.dims() if not bool(self.chan_keep(chan, d, shape[d]).all())}

    def out_changed_dims(self) -> set[int]:
        value = self.original_value()
        if not isinstance(value, torch.Tensor):
            return set()
        return self._changed(self._out_chan(), value.shape)

    def in_changed_dims(self, i: int) -> set[int]:
        a = self.node.args[i]
        if not isinstance(a, fx.Node):
            return set()
        return self._changed(a.meta.get("channels"), self.in_value(i).shape)

    def new_out_shape(self) -> list[int]:
        value = self.original_value()
        shape = list(value.shape)
        for d in self.out_changed_dims():
            shape[d] = int(self.out_keep(d).sum())
        return shape

    def replace_target(self, target: Callable) -> None:
        """Emit the node as a call of another function (e.g. chunk -> split)."""
        self.new_target = target

