"""Which units a plan removes: from the gates as they are (:func:`plan_from_gates`, what
finalize applies), or the lowest-scored units until a cost budget is met
(:func:`plan_for_budget`, what the end of the gated phase and the score-based baselines apply).

Both honour every group's limits (``min_channels``, ``max_fraction``, ``round_to`` and the
units the analysis froze; :func:`gdp_graph.policy.max_removable`), so the count a plan removes
is the count the rewritten model loses.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Optional

import torch
from torch import Tensor

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import CostModel
from gdp_graph.policy import Resolution
from gdp_graph.prune.plan import PruningPlan

__all__ = ["group_limit", "inside_removed_blocks", "plan_fraction", "plan_for_budget", "plan_from_gates"]


def inside_removed_blocks(analysis: Analysis, gid: int, removed: frozenset[int]) -> bool:
    nodes = {n for b in removed for n in analysis.blocks[b].nodes}
    members = {m.node for m in analysis.groups[gid].members}
    return bool(members) and members <= nodes


def group_limit(analysis: Analysis, resolution: Resolution, gid: int, candidates: int) -> int:
    """How many of ``candidates`` units of group ``gid`` may go (every other free unit kept); a
    group never vanishes outside a removed block."""
    group = analysis.groups[gid]
    settings = resolution.group_settings[gid]
    limit = settings.max_removable(group.size, frozen=group.size - candidates, divisor=group.divisor)
    if limit == group.size:
        limit = replace(settings, min_channels=max(1, settings.min_channels)).max_removable(
            group.size, frozen=group.size - candidates, divisor=group.divisor)
    return max(limit, 0)


def plan_from_gates(analysis: Analysis, group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor],
                    resolution: Resolution, threshold: float) -> PruningPlan:
    """The plan that removes what the gates switched off.

    In every gated group the units with ``gate <= threshold`` are candidates; as many are
    removed as the group's limits allow, those with the smallest gates first, so a unit kept
    only because of a limit is one with the largest gate among the candidates. Gated blocks
    with ``gate <= threshold`` are removed; groups that lie entirely inside a removed block are
    left alone (they disappear with it).
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    removed_blocks = frozenset(b for b, g in block_gates.items() if float(g) <= threshold)
    keep: dict[int, tuple[int, ...]] = {}
    inexact = False
    for gid, gates in group_gates.items():
        group = analysis.groups[gid]
        if inside_removed_blocks(analysis, gid, removed_blocks):
            continue
        gates = gates.detach().double().cpu()
        candidate = (gates <= threshold) & ~group.frozen_units
        n_cand = int(candidate.sum())
        limit = group_limit(analysis, resolution, gid, n_cand) if n_cand else 0
        if limit <= 0:
            continue
        order = sorted(torch.nonzero(candidate).flatten().tolist(), key=lambda u: (float(gates[u]), u))
        removed = set(order[:limit])
        keep[gid] = tuple(u for u in range(group.size) if u not in removed)
        inexact = inexact or not group.exact
    return PruningPlan(keep=keep, removed_blocks=removed_blocks, allow_inexact=inexact)


def plan_fraction(cost_model: CostModel, plan: PruningPlan, metric: str) -> float:
    """The plan's remaining share of the original ``metric`` (the cost model's prediction,
    which matches FlopCounterMode on the rewritten model)."""
    total = cost_model.total.metric(metric) or 1.0
    return cost_model.plan_cost(plan.keep, sorted(plan.removed_blocks)).metric(metric) / total


def plan_for_budget(analysis: Analysis, cost_model: CostModel, resolution: Resolution,
                    scores: Mapping[int, Tensor], target: float, *, metric: str = "flops",
                    normalize: bool = False, removed_blocks: frozenset[int] = frozenset()
                    ) -> tuple[PruningPlan, float]:
    """Remove the lowest-``scores`` units (one score per unit of every listed group) until the
    plan's remaining share of ``metric`` is as close to ``target`` as the unit sizes allow.

    Units are taken in ascending score over the whole network (``normalize``: each group's
    scores divided by their mean first, so groups of different scale compete fairly), skipping
    a unit once its group reached its limit; the cut is the prefix of that order whose fraction
    is closest to ``target`` (found by bisection, the fraction falls with every unit). Groups
    inside ``removed_blocks`` (removed in any case) are left out. Returns the plan and its
    fraction.
    """
    entries = []
    scores = {gid: s for gid, s in scores.items() if not inside_removed_blocks(analysis, gid, removed_blocks)}
    for gid, s in scores.items():
        group = analysis.groups[gid]
        s = s.detach().double().cpu().reshape(-1)
        if normalize:
            free = s[~group.frozen_units]
            s = s / (free.abs().mean() if free.numel() and float(free.abs().mean()) > 0 else 1.0)
        for u in torch.nonzero(~group.frozen_units).flatten().tolist():
            entries.append((float(s[u]), gid, u))
    entries.sort()
    limits = {gid: group_limit(analysis, resolution, gid, int((~analysis.groups[gid].frozen_units).sum()))
              for gid in scores}
    order: list[tuple[int, int]] = []
    taken: dict[int, int] = {}
    for _, gid, u in entries:
        if taken.get(gid, 0) < limits[gid]:
            taken[gid] = taken.get(gid, 0) + 1
            order.append((gid, u))

    def plan_of(k: int) -> PruningPlan:
        removed: dict[int, set[int]] = {}
        for gid, u in order[:k]:
            removed.setdefault(gid, set()).add(u)
        keep = {}
        for gid, units in removed.items():
            group = analysis.groups[gid]
            units = _round(resolution, analysis, gid, units, [u for g, u in order if g == gid])
            if units:
                keep[gid] = tuple(u for u in range(group.size) if u not in units)
        inexact = any(not analysis.groups[g].exact for g in keep)
        return PruningPlan(keep=keep, removed_blocks=removed_blocks, allow_inexact=inexact)

    lo, hi = 0, len(order)  # fraction(lo) >= target side; find the first k with fraction <= target
    if plan_fraction(cost_model, plan_of(hi), metric) > target:
        plan = plan_of(hi)
        return plan, plan_fraction(cost_model, plan, metric)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if plan_fraction(cost_model, plan_of(mid), metric) > target:
            lo = mid
        else:
            hi = mid
    best: Optional[tuple[float, PruningPlan, float]] = None
    for k in (lo, hi):
        plan = plan_of(k)
        f = plan_fraction(cost_model, plan, metric)
        if best is None or abs(f - target) < best[0]:
            best = (abs(f - target), plan, f)
    assert best is not None
    return best[1], best[2]


def _round(resolution: Resolution, analysis: Analysis, gid: int, units: set[int], ranked: list[int]) -> set[int]:
    """``units`` trimmed (the highest-ranked first back) so that the kept count honours
    ``round_to`` and the group's divisor."""
    group = analysis.groups[gid]
    while units and group_limit(analysis, resolution, gid, len(units)) < len(units):
        units = units - {max(units, key=ranked.index)}
    return units
