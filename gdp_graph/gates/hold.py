"""Holding the budget while the gates train (policy key ``regularizer.hold_budget``).

In a short window the gates fall together: once their ``theta`` nears ``sqrt(epsilon)`` the
soft cost drops in a few steps, far below the target, while lambda (which had wound up during
the dead time) comes down too late; Adam's momentum carries the gates on, and the cut at
``fix_at`` has to reopen units whose gates had collapsed. Holding the budget makes that
impossible: after every step the units that a cut to the target would keep now (ranked by
``theta``, :func:`~gdp_graph.gates.cut.budget_plan`, the cut itself)
are held at a gate of at least 0.99 (``GateBank.hold_floor``), so only the others can go to 0.
The others keep their gate value as epsilon shrinks (their ``theta`` is scaled with
``sqrt(epsilon)``, ``GateBank.set_epsilon(carry=...)``): annealing alone pulls no unit outside
the budget back open, only the task gradient can, by ranking it above a held one.
Lambda then only decides how fast they go; the set held moves whenever training reorders
``theta``, and at the cut the held set is the kept set, so the cut confirms what the gates did.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gdp_graph.gates.cut import budget_plan

__all__ = ["budget_keep_mask"]


@torch.no_grad()
def budget_keep_mask(gated: Any) -> Tensor:
    """Flat mask (the bank's positions) of the free units that the cut to the target would keep
    now, for a :class:`~gdp_graph.gates.model.GatedModel` (which calls this, hence untyped);
    groups that vanish with a removed block are not held."""
    bank = gated.bank
    # a step past 0 is a gate going to 0 (projection clamps it to the floor), not an open one
    plan = budget_plan(gated, bank.theta().detach().clamp_min(0.0).cpu())
    return bank.kept_by(plan, gated.resolution.inner_blocks)
