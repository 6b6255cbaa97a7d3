"""Which units a plan removes: from the gates as they are (:func:`plan_from_gates`, what
finalize applies), or the lowest-scored units until a cost budget is met
(:func:`plan_for_budget`, what the end of the gated phase and the score-based baselines apply).

Both honour every group's limits (``min_channels``, ``max_fraction``, ``round_to`` and the
units the analysis froze; :func:`gdp_graph.policy.max_removable`), so the count a plan removes
is the count the rewritten model loses, and both apply the structure a policy adds
(:mod:`gdp_graph.policy.structure`):

* a block at ``block_level: inner`` (``Resolution.inner_blocks``) has no gate; it is removed,
  its constant term kept, when its inner groups lose every unit. A group never vanishes while
  its block stays, so until then the groups follow their normal limits.
* the groups of a uniform set (``Resolution.uniform_sets``) keep the same number of units; each
  chooses which by its own gates or scores. The common count honours every member's limits.
  A member inside a removed block leaves the set (it is gone whole).
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from typing import Iterable, Mapping, Optional

import torch
from torch import Tensor

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import CostModel
from gdp_graph.policy import Resolution
from gdp_graph.prune.plan import PruningPlan

__all__ = ["common_removal", "group_limit", "inside_removed_blocks", "plan_fraction", "plan_for_budget",
           "plan_from_gates"]


def inside_removed_blocks(analysis: Analysis, gid: int, removed: frozenset[int]) -> bool:
    return gid in _groups_inside(analysis, removed)


def _groups_inside(analysis: Analysis, blocks: Iterable[int]) -> set[int]:
    """Ids of the groups whose every member lies in one of ``blocks`` (they vanish with them)."""
    nodes = {n for b in blocks for n in analysis.blocks[b].nodes}
    if not nodes:
        return set()
    return {g.id for g in analysis.groups if g.members and {m.node for m in g.members} <= nodes}


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


def common_removal(analysis: Analysis, resolution: Resolution, wanted: Mapping[int, tuple[int, int]]) -> int:
    """The largest count that every group ``gid`` of ``wanted`` (``gid -> (count it would
    remove, its candidate units)``) may remove: at most each one's count, and honouring each
    one's limits (``round_to`` may differ between members, so the smallest count alone is not
    always allowed). With one group: its count rounded to what its limits allow."""
    count = min((w for w, _ in wanted.values()), default=0)
    # a count is allowed when the limits let exactly that many of that many candidates go
    while count > 0 and not all(count <= free and group_limit(analysis, resolution, gid, count) == count
                                for gid, (_, free) in wanted.items()):
        count -= 1
    return count


def _live_sets(analysis: Analysis, resolution: Resolution, present: Iterable[int],
               removed_blocks: frozenset[int]) -> list[tuple[int, ...]]:
    """The uniform sets restricted to the groups a plan deals with (``present``: those with
    gates or scores) that survive ``removed_blocks``; sets left with one member drop out."""
    present, gone = set(present), _groups_inside(analysis, removed_blocks)
    live = [tuple(g for g in members if g in present and g not in gone) for members in resolution.uniform_sets]
    return [members for members in live if len(members) > 1]


def _emptied_blocks(analysis: Analysis, resolution: Resolution, group_gates: Mapping[int, Tensor],
                    threshold: float) -> set[int]:
    """Blocks at level ``inner`` whose inner groups have every free gate ``<= threshold``."""
    out = set()
    for bid, inner in resolution.inner_blocks.items():
        if all(gid in group_gates and bool((group_gates[gid].detach().double().cpu()[~analysis.groups[gid].frozen_units]
                                            <= threshold).all()) for gid in inner):
            out.add(bid)
    return out


def plan_from_gates(analysis: Analysis, group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor],
                    resolution: Resolution, threshold: float) -> PruningPlan:
    """The plan that removes what the gates switched off.

    In every gated group the units with ``gate <= threshold`` are candidates; as many are
    removed as the group's limits allow, those with the smallest gates first, so a unit kept
    only because of a limit is one with the largest gate among the candidates. Gated blocks
    with ``gate <= threshold`` are removed, and so are blocks at level ``inner`` whose inner
    groups have every gate ``<= threshold``; groups that lie entirely inside a removed block
    are left alone (they disappear with it). A uniform set removes from each member the
    smallest count any member removes (its kept count is the largest any member needs).
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    removed_blocks = frozenset({b for b, g in block_gates.items() if float(g) <= threshold}
                               | _emptied_blocks(analysis, resolution, group_gates, threshold))
    gone = _groups_inside(analysis, removed_blocks)
    ranked: dict[int, list[int]] = {}  # each group's candidates, smallest gate first
    count: dict[int, int] = {}
    for gid, gates in group_gates.items():
        if gid in gone:
            continue
        gates = gates.detach().double().cpu()
        candidate = (gates <= threshold) & ~analysis.groups[gid].frozen_units
        ranked[gid] = sorted(torch.nonzero(candidate).flatten().tolist(), key=lambda u: (float(gates[u]), u))
        count[gid] = group_limit(analysis, resolution, gid, len(ranked[gid])) if ranked[gid] else 0
    for members in _live_sets(analysis, resolution, count, removed_blocks):
        common = common_removal(analysis, resolution, {g: (count[g], len(ranked[g])) for g in members})
        count.update(dict.fromkeys(members, common))
    return _plan(analysis, {gid: ranked[gid][:n] for gid, n in count.items() if n > 0}, removed_blocks)


def _plan(analysis: Analysis, removed: Mapping[int, list[int]], removed_blocks: frozenset[int]) -> PruningPlan:
    keep = {}
    for gid, units in removed.items():
        keep[gid] = tuple(sorted(set(range(analysis.groups[gid].size)).difference(units)))
    inexact = any(not analysis.groups[g].exact for g in keep)
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
    is closest to ``target`` (found by bisection, the fraction falls with every step). Two more
    kinds of step share the ranking:

    * a uniform set is cut in *slices*: the k-th removes the k-th lowest unit of every member,
      scored by the mean of those members' scores (a slice is as unimportant as its average
      unit, whatever the set's size); there are as many slices as the common limit allows;
    * a block at level ``inner`` whose inner groups all have scores is one step scored by the
      largest score among its inner units, so it comes after every one of them (a tie goes to
      the units); taking it removes the block and its inner groups. Until then the groups'
      own limits bound what goes.

    Groups inside ``removed_blocks`` (removed in any case) are left out. Returns the plan and
    its fraction.
    """
    ranking = _Ranking(analysis, resolution, scores, normalize, removed_blocks)
    lo, hi = 0, len(ranking.order)  # fraction(lo) >= target side; find the first k with fraction <= target
    if plan_fraction(cost_model, ranking.plan(hi), metric) > target:
        plan = ranking.plan(hi)
        return plan, plan_fraction(cost_model, plan, metric)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if plan_fraction(cost_model, ranking.plan(mid), metric) > target:
            lo = mid
        else:
            hi = mid
    best: Optional[tuple[float, PruningPlan, float]] = None
    for k in (lo, hi):
        plan = ranking.plan(k)
        f = plan_fraction(cost_model, plan, metric)
        if best is None or abs(f - target) < best[0]:
            best = (abs(f - target), plan, f)
    assert best is not None
    return best[1], best[2]


class _Ranking:
    """The order in which :func:`plan_for_budget` takes its steps, and the plan of a prefix.
    A step is ``("unit", gid, u)``, ``("slice", set index)`` or ``("block", bid)``."""

    def __init__(self, analysis: Analysis, resolution: Resolution, scores: Mapping[int, Tensor], normalize: bool,
                 removed_blocks: frozenset[int]):
        self.analysis, self.resolution, self.removed_blocks = analysis, resolution, removed_blocks
        gone = _groups_inside(analysis, removed_blocks)
        # plain lists: this runs after every gate step under hold_budget, and indexing tensors
        # element by element cost 40x more
        score = {gid: _prepared(analysis, gid, s, normalize).tolist() for gid, s in scores.items() if gid not in gone}
        # every group's free units, lowest score first (ties by index)
        self.ranked = {gid: sorted(torch.nonzero(~analysis.groups[gid].frozen_units).flatten().tolist(),
                                   key=lambda u, s=s: (s[u], u)) for gid, s in score.items()}
        limits = {gid: group_limit(analysis, resolution, gid, len(units)) for gid, units in self.ranked.items()}
        self.sets = _live_sets(analysis, resolution, score, removed_blocks)
        self.order = self._order(score, limits)
        # where each group's (set's, block's) steps fall in the order: the plan of a prefix counts them
        self.positions: dict[tuple[str, int], list[int]] = {}
        for position, (kind, ident, *_) in enumerate(self.order):
            self.positions.setdefault((str(kind), int(ident)), []).append(position)

    def _order(self, score: Mapping[int, list[float]], limits: Mapping[int, int]) -> list[tuple[int | str, ...]]:
        """Every step, ascending score (see :func:`plan_for_budget`); a unit past its group's
        limit is skipped."""
        in_set = {g for members in self.sets for g in members}
        entries: list[tuple[tuple[float, int, int, int], tuple[int | str, ...]]] = []
        for gid, units in self.ranked.items():
            if gid not in in_set:
                entries += [((score[gid][u], 0, gid, u), ("unit", gid, u)) for u in units]
        for j, members in enumerate(self.sets):
            slices = common_removal(self.analysis, self.resolution,
                                    {g: (limits[g], len(self.ranked[g])) for g in members})
            for k in range(slices):
                mean = sum(score[g][self.ranked[g][k]] for g in members) / len(members)
                entries.append(((mean, 0, members[0], k), ("slice", j)))
        for bid, inner in self.resolution.inner_blocks.items():
            if bid not in self.removed_blocks and all(g in score and self.ranked[g] for g in inner):
                top = max(score[g][self.ranked[g][-1]] for g in inner)
                entries.append(((top, 1, bid, 0), ("block", bid)))
        entries.sort(key=lambda e: e[0])
        order: list[tuple[int | str, ...]] = []
        taken: dict[int, int] = {}
        for _, step in entries:
            if step[0] == "unit":
                gid = int(step[1])
                if taken.get(gid, 0) >= limits[gid]:
                    continue
                taken[gid] = taken.get(gid, 0) + 1
            order.append(step)
        return order

    def _taken(self, kind: str, k: int) -> dict[int, int]:
        """How many steps of ``kind`` each group (set, block) has among the first ``k``."""
        counts = {ident: bisect.bisect_left(positions, k) for (kd, ident), positions in self.positions.items()
                  if kd == kind}
        return {ident: n for ident, n in counts.items() if n > 0}

    def plan(self, k: int) -> PruningPlan:
        """The plan of the first ``k`` steps, every count rounded down to what the limits allow."""
        units, slices = self._taken("unit", k), self._taken("slice", k)
        removed_blocks = frozenset(set(self.removed_blocks) | set(self._taken("block", k)))
        gone = _groups_inside(self.analysis, removed_blocks)
        counts: dict[int, int] = {}
        for gid, n in units.items():  # a group's units are taken lowest score first: a prefix of its ranking
            if gid not in gone:
                counts[gid] = common_removal(self.analysis, self.resolution, {gid: (n, len(self.ranked[gid]))})
        for j, n in slices.items():
            live = [g for g in self.sets[j] if g not in gone]
            if live:
                common = common_removal(self.analysis, self.resolution, {g: (n, len(self.ranked[g])) for g in live})
                counts.update(dict.fromkeys(live, common))
        removed = {gid: self.ranked[gid][:n] for gid, n in counts.items() if n > 0}
        return _plan(self.analysis, removed, removed_blocks)


def _prepared(analysis: Analysis, gid: int, scores: Tensor, normalize: bool) -> Tensor:
    """A group's scores as a flat float64 vector, divided by their mean magnitude over the free
    units when ``normalize`` (so that groups of different scale compete fairly)."""
    s = scores.detach().double().cpu().reshape(-1)
    if normalize:
        free = s[~analysis.groups[gid].frozen_units]
        mean = float(free.abs().mean()) if free.numel() else 0.0
        s = s / (mean if mean > 0 else 1.0)
    return s
