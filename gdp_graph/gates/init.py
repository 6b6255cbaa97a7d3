"""Gates that start ranked: ``theta`` set from per-unit importance before the gated phase
(policy key ``regularizer.init``).

With every ``theta`` at the same start, the gates' short training is all that separates them
when they are cut at ``fix_at``: with a few dozen Adam steps the cut ranks units on tiny
differences of ``theta``. Starting ranked, the least important units begin closer to 0, so they
reach it within the window while the task gradient can still lift any of them (Adam moves every
``theta`` by about the gates' learning rate per step, so a spread of the order of that times the
window leaves training room to reorder units near the cut).

Unit ``u`` of rank quantile ``q_u`` in [0, 1] (0: least important over the whole network; with
``per_group``, the default, each group's scores are divided by their mean over its free units
first, as the one-shot cut ranks them, so every group gets a similar share of low starts; without
it the raw scores rank across groups, for scores on one scale such as Taylor's loss change, and
the start itself allocates the cut between layers: policy key ``regularizer.init_rank``)
starts at ``theta_start * (1 - spread * (1 - q_u))``. For smoothed-L0 gates with ``init_gate``
0.99 and ``spread`` 0.9 the least important unit starts at a gate of about 0.5, the median one
at about 0.97. Frozen units, groups without scores and block gates keep ``theta_start``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

from gdp_graph.gates.bank import GateError
from gdp_graph.gates.model import GatedModel
from gdp_graph.graph.analysis import Analysis

__all__ = ["DATA_FREE_SCORERS", "init_from_scores", "ranked_theta", "register_data_free_scorer"]

#: ``regularizer.init`` methods that need no data, by name: ``scorer(analysis) -> {gid: scores}``.
#: Filled by :mod:`gdp_graph.importance` (a later stage) when it is imported, as ``gdp_graph``
#: does; :func:`gdp_graph.attach` applies them, the data-driven ones need
#: :func:`gdp_graph.importance.init_gates`.
DATA_FREE_SCORERS: dict[str, Callable[[Analysis], Mapping[int, Tensor]]] = {}


def register_data_free_scorer(name: str) -> Callable[[Callable[[Analysis], Mapping[int, Tensor]]],
                                                      Callable[[Analysis], Mapping[int, Tensor]]]:
    """Decorator: ``scorer(analysis)`` becomes the ``regularizer.init: name`` that ``attach`` applies."""
    def add(scorer: Callable[[Analysis], Mapping[int, Tensor]]) -> Callable[[Analysis], Mapping[int, Tensor]]:
        DATA_FREE_SCORERS[name] = scorer
        return scorer
    return add


def ranked_theta(gated: GatedModel, scores: Mapping[int, Tensor], spread: float, per_group: bool = True) -> Tensor:
    """The flat ``theta`` (the bank's order) that ranks the free units of the scored groups
    (see the module docstring); other positions keep their current ``theta``."""
    if not 0.0 <= spread < 1.0:
        raise GateError(f"regularizer.init_spread must be in [0, 1), got {spread!r}")
    bank = gated.bank
    theta = bank.theta().detach().clone()
    values, positions = [], []
    for gid in bank.group_ids:
        if gid not in scores:
            continue
        group = gated.analysis.groups[gid]
        s = scores[gid].detach().double().cpu().reshape(-1)
        if s.numel() != group.size:
            raise GateError(f"group {gid}: {s.numel()} scores for {group.size} units")
        free = (~group.frozen_units).nonzero().flatten()
        if not free.numel():
            continue
        mean = float(s[free].abs().mean()) if per_group else 1.0
        values.append(s[free] / (mean if mean > 0 else 1.0))
        positions.append(bank.position(gid, free))
    if not values:
        return theta
    value, position = torch.cat(values), torch.cat(positions)
    order = torch.argsort(value, stable=True)
    quantile = torch.empty_like(value)
    quantile[order] = torch.linspace(0.0, 1.0, value.numel(), dtype=value.dtype) if value.numel() > 1 else 1.0
    start = bank.theta_start * (1.0 - spread * (1.0 - quantile))
    theta[position.to(theta.device)] = start.to(theta)
    return theta


@torch.no_grad()
def init_from_scores(gated: GatedModel, scores: Mapping[int, Tensor], spread: float = 0.9, *,
                     per_group: bool = True) -> None:
    """Set every gate's ``theta`` from ``scores`` (``{gid: one score per unit}``, higher = more
    important) before the gated phase; raises :class:`GateError` once training has started."""
    if int(gated.bank.step) > 0 or bool(gated.fixed):
        raise GateError("gates can be initialised from importance only before the gated phase starts")
    gated.bank._write_theta(ranked_theta(gated, scores, spread, per_group))
    gated.init_pending = None
