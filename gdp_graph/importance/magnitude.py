"""Magnitude importance: the plain L2 norm of each unit's weights (see
:mod:`gdp_graph.importance.scores`)."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from gdp_graph.gates.init import register_data_free_scorer
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.inject import collect_sites
from gdp_graph.importance.common import ImportanceError

__all__ = ["magnitude_scores"]


@register_data_free_scorer("magnitude")  # regularizer.init: magnitude, applied by attach()
def magnitude_scores(analysis: Analysis) -> dict[int, Tensor]:
    """``{gid: plain L2 norm per unit}`` over the group's parameter members and the input
    columns of the plain conv / linear layers that consume it (see the module docstring)."""
    gm = analysis.traced.gm
    params = dict(gm.named_parameters())
    squares = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in analysis.groups}
    for labels, member in analysis.store.members:
        if member.param is None:
            continue
        weight = _member_parameter(params, member.target, member.param)
        if weight is None:
            continue
        groups, units = analysis.group_of_element[labels], analysis.unit_of_element[labels]
        _add_slices(squares, weight, member.dim, groups, units, f"{member.role} '{member.param}' of '{member.target}'")
    nodes = {n.name: n for n in gm.graph.nodes}
    for site in collect_sites(analysis, [g.id for g in analysis.groups], ()):
        if site.mode != "weight":
            continue
        weight = gm.get_submodule(str(nodes[site.node].target)).weight
        dim = site.shape.index(-1)  # the weight dim the site's multiplier scales: its input columns
        for kind, gid, unit_index in site.factors:
            if kind == "group":
                groups = torch.where(unit_index >= 0, gid, -1)
                _add_slices(squares, weight, dim, groups, unit_index, f"input columns of '{site.node}'")
    return {gid: s.sqrt() for gid, s in squares.items()}


def _member_parameter(params: Mapping[str, Tensor], target: str, param: str) -> Optional[Tensor]:
    """The parameter a member names (``target.param`` for a module's, ``param`` itself for a
    parameter used directly); None for a buffer or a missing one."""
    for name in (f"{target}.{param}", param):
        if name in params:
            return params[name]
    return None


def _add_slices(squares: dict[int, Tensor], weight: Tensor, dim: int, groups: Tensor, units: Tensor,
                where: str) -> None:
    """Add the squared entries of ``weight``'s slices along ``dim`` to the unit each position
    belongs to (``groups[i]``, ``units[i]`` for position ``i``; group -1: none)."""
    groups, units = groups.reshape(-1).long(), units.reshape(-1).long()
    if not 0 <= dim < weight.dim() or weight.shape[dim] != groups.numel():
        raise ImportanceError(f"magnitude: {where} has {tuple(weight.shape)} along dim {dim}, but the analysis "
                              f"labelled {groups.numel()} positions")
    per_position = weight.detach().double().movedim(dim, 0).reshape(weight.shape[dim], -1).pow(2).sum(1).cpu()
    for gid in groups.unique().tolist():
        if gid < 0 or gid not in squares:
            continue
        at = groups == gid
        if int(units[at].max()) >= squares[gid].numel():
            raise ImportanceError(f"magnitude: {where} names unit {int(units[at].max())} of group {gid}, "
                                  f"which has {squares[gid].numel()}")
        squares[gid].index_add_(0, units[at], per_position[at])
