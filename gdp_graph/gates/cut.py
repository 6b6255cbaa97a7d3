"""Plans read from a gate bank, one function per question.

- :func:`plan_from_gates`: what the gates switched off (gates ``<= threshold``, within the
  limits): the plan :func:`~gdp_graph.gates.finalize.finalize` applies and
  :meth:`~gdp_graph.gates.model.GatedModel.current_plan` shows.
- :func:`budget_plan`: the cut to the target, units ranked by ``theta``: what the gates are cut
  to at ``fix_at`` and what ``regularizer.hold_budget`` holds open before.
- :func:`protected_mask`: the units each group's limits force to stay.

Plans name units by group (:class:`~gdp_graph.prune.plan.PruningPlan`); the bank turns them into
its flat masks (:meth:`GateBank.removed_by <gdp_graph.gates.bank.GateBank.removed_by>`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gdp_graph.gates import selection
from gdp_graph.gates.bank import GateBank
from gdp_graph.graph.analysis import Analysis
from gdp_graph.policy import Resolution
from gdp_graph.prune.plan import PruningPlan

__all__ = ["budget_plan", "budget_plan_at", "plan_from_gates", "protected_mask"]


def plan_from_gates(analysis: Analysis, bank: GateBank, resolution: Resolution, threshold: float) -> PruningPlan:
    """The plan that removes what ``bank``'s gates switched off (see
    :func:`gdp_graph.gates.selection.plan_from_gates`)."""
    groups, blocks = bank.values()
    return selection.plan_from_gates(analysis, groups, blocks, resolution, threshold)


def budget_plan(gated: Any, theta: Tensor) -> PruningPlan:
    """The cut of a :class:`~gdp_graph.gates.model.GatedModel` to its target with the units
    ranked by ``theta`` (flat, the bank's order: at a tiny epsilon every surviving gate is 1.0,
    its ``theta`` still tells them apart); blocks whose gate is ``<= 0.5`` are removed."""
    return budget_plan_at(gated, theta, gated.policy.target.fraction)[0]


def budget_plan_at(gated: Any, theta: Tensor, fraction: float) -> tuple[PruningPlan, float]:
    """:func:`budget_plan` to ``fraction`` of the target metric instead of the policy's target,
    with the fraction the cost model predicts for it (the planner of the closed-loop cut)."""
    bank = gated.bank
    groups, _ = bank.split(theta)
    _, blocks = bank.values()
    gone = frozenset(b for b, g in blocks.items() if float(g) <= 0.5)
    return selection.plan_for_budget(gated.analysis, gated.cost_model, gated.resolution, groups, fraction,
                                     metric=gated.metric, removed_blocks=gone)


def protected_mask(analysis: Analysis, resolution: Resolution, bank: GateBank) -> Tensor:
    """Flat mask of the units each group's limits force to stay: its largest ``theta``.

    The inner groups of blocks at ``block_level: inner`` are not protected: their block goes
    when all their gates do, so every one of them must be free to reach 0. While the block
    stays their limits still hold in every plan; at ``fix_at`` the cut to the budget decides
    (``plan_for_budget`` ranks the block after its inner units and either removes it whole or
    cuts its groups within their limits)."""
    theta, _ = bank.split(bank.theta().detach().cpu())
    may_vanish = {gid for inner in resolution.inner_blocks.values() for gid in inner}
    stays = {}
    for gid in bank.group_ids:
        if gid in may_vanish:
            continue
        group = analysis.groups[gid]
        free = (~group.frozen_units).nonzero().flatten()
        stay = len(free) - selection.group_limit(analysis, resolution, gid, len(free))
        if stay > 0:
            order = free[torch.argsort(theta[gid][free], descending=True, stable=True)]
            stays[gid] = order[:stay].tolist()
    return bank.mask(stays)
