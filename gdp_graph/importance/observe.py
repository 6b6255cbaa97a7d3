"""Activation statistics at the gate sites and at the residual adds, from one pass of the
traced graph per batch: a private copy of ``analysis.traced.gm`` (sharing the user's weights,
in eval mode, without gradient) with observer modules inserted that record what flows through
and change nothing. See :mod:`gdp_graph.importance.scores` for the definitions."""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.model_copy import deepcopy_model
from gdp_graph.importance.common import ImportanceError, InputsFn, call_args, device_of, limited, to_device

__all__ = ["activation_scores", "shared_copy"]


class _UnitMeans(nn.Module):
    """Adds the mean ``|x|`` of every unit of one group at one site to ``total`` (per unit:
    the mean over the batch, the other dims and the unit's positions along ``dim``)."""

    def __init__(self, gid: int, dim: int, unit_index: Tensor, size: int, where: str):
        super().__init__()
        self.gid, self.dim, self.where = gid, dim, where
        self.unit_index = unit_index.reshape(-1).long()
        self.total = torch.zeros(size, dtype=torch.float64)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        per_position = x.detach().abs().double().movedim(self.dim, 0).reshape(x.shape[self.dim], -1).mean(1).cpu()
        if per_position.numel() != self.unit_index.numel():
            raise ImportanceError(f"activation: {self.where} has {per_position.numel()} positions along dim "
                                  f"{self.dim}, the analysis labelled {self.unit_index.numel()}")
        at = self.unit_index >= 0
        sums = torch.zeros_like(self.total).index_add_(0, self.unit_index[at], per_position[at])
        ones = torch.ones(int(at.sum()), dtype=torch.float64)
        counts = torch.zeros_like(self.total).index_add_(0, self.unit_index[at], ones)
        self.total += sums / counts.clamp_min(1.0)
        self.calls += 1
        return x


class _BlockChange(nn.Module):
    """Adds ``1 - cos(shortcut, output)`` per sample (flattened) of one residual add to ``total``."""

    def __init__(self, bid: int):
        super().__init__()
        self.bid = bid
        self.total, self.samples = 0.0, 0

    def forward(self, shortcut: Tensor, output: Tensor) -> Tensor:
        a, b = shortcut.detach().double(), output.detach().double()
        if a.shape != b.shape or a.dim() == 0:
            a, b = torch.broadcast_tensors(a, b)
        a, b = (a.reshape(1, -1), b.reshape(1, -1)) if a.dim() == 1 else (a.flatten(1), b.flatten(1))
        cos = F.cosine_similarity(a, b, dim=1)
        self.total += float((1.0 - cos).sum())
        self.samples += cos.numel()
        return output


def shared_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy of ``gm`` whose parameters and buffers are ``gm``'s own (no weight is copied)."""
    memo = {id(t): t for t in itertools.chain(gm.parameters(), gm.buffers())}
    return deepcopy_model(gm, memo)


def _observed(analysis: Analysis, with_units: bool) -> tuple[fx.GraphModule, list[_UnitMeans], list[_BlockChange]]:
    """The observed copy of the traced graph and its observers."""
    gm = shared_copy(analysis.traced.gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    units: list[_UnitMeans] = []
    blocks: list[_BlockChange] = []
    points: list[tuple[nn.Module, fx.Node, tuple[Any, ...]]] = []
    if with_units:
        for g in analysis.groups:
            for s in g.gate_sites:
                node = nodes[s.node]
                if s.arg >= len(node.args) or not isinstance(node.args[s.arg], fx.Node):
                    continue
                obs = _UnitMeans(g.id, s.dim % s.ndim, s.unit_index, g.size, f"input {s.arg} of node '{s.node}'")
                units.append(obs)
                points.append((obs, node, (node.args[s.arg],)))
    for b in analysis.blocks:
        add = nodes.get(b.add_node)
        if add is None or len(add.args) < 2 or not isinstance(add.args[1 - b.arg], fx.Node):
            continue
        obs = _BlockChange(b.id)
        blocks.append(obs)
        points.append((obs, add, (add.args[1 - b.arg], add)))
    for i, (obs, node, args) in enumerate(points):
        name = f"importance_observer_{i}"
        gm.add_submodule(name, obs)
        where = node.next if node in args else node  # after the add (it reads its output), else before
        with gm.graph.inserting_before(where):
            gm.graph.call_module(name, args)
    gm.recompile()
    return gm, units, blocks


@torch.no_grad()
def activation_scores(analysis: Analysis, batches: Iterable[Any], *, inputs: Optional[InputsFn] = None,
                      max_batches: Optional[int] = None, with_units: bool = True
                      ) -> tuple[dict[int, Tensor], dict[int, float], int]:
    """``(unit scores, block scores, batches used)``: mean ``|activation|`` per unit at the
    group's gate sites (averaged over sites; groups without a site are absent) and
    ``1 - cos(shortcut, output)`` per removable block, in eval mode."""
    gm, units, blocks = _observed(analysis, with_units)
    gm.eval()
    device = device_of(analysis)
    n = 0
    for batch in limited(batches, max_batches):
        args, kwargs = call_args(to_device(batch, device), inputs)
        gm(*args, **kwargs)
        n += 1
    if n == 0:
        raise ImportanceError("importance: the batches were empty (no batch to measure on)")
    totals: dict[int, Tensor] = {}
    sites: dict[int, int] = {}
    for obs in units:
        if obs.calls:
            totals[obs.gid] = totals.get(obs.gid, 0) + obs.total / obs.calls
            sites[obs.gid] = sites.get(obs.gid, 0) + 1
    unit_scores = {gid: t / sites[gid] for gid, t in totals.items()}
    block_scores = {obs.bid: obs.total / obs.samples for obs in blocks if obs.samples}
    return unit_scores, block_scores, n
