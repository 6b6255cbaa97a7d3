"""One-shot pruning to a budget from importance scores: the lowest-scored blocks and units go
until the cost is as close to the target as the unit sizes allow. The unit selection is the
library's one (:func:`gdp_graph.gates.selection.plan_for_budget`: every group's limits, uniform
sets and inner blocks honoured), the same that cuts GDP's gates at ``fix_at``."""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

from gdp_graph.gates.selection import plan_for_budget, plan_fraction
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import CostModel
from gdp_graph.importance.common import ImportanceError, Scores
from gdp_graph.latency.loop import LoopResult, LoopRound, Measured, close_loop, latency_measure
from gdp_graph.policy import Resolution
from gdp_graph.prune.plan import PruningPlan

__all__ = ["one_shot_plan", "one_shot_to_latency"]


def one_shot_plan(analysis: Analysis, scores: Scores, resolution: Resolution, target: Optional[float] = None, *,
                  metric: Optional[str] = None, cost_model: Optional[CostModel] = None,
                  remove_blocks: Optional[int] = None, normalize: bool = True) -> tuple[PruningPlan, float]:
    """The plan that removes the least important units (and blocks) of the groups (blocks)
    ``resolution`` gates until ``metric`` keeps about ``target`` of the original; returns it
    and the fraction it keeps (the cost model's prediction, equal to FlopCounterMode on the
    rewritten model).

    Args:
        scores: from :func:`~gdp_graph.importance.score_units` on this ``analysis``.
        target, metric: default to the policy's ``target.fraction`` and ``target.metric``.
        cost_model: reused when given (building one counts the graph's FLOPs).
        remove_blocks: how many of the least important removable blocks (``scores.blocks``,
            among the policy's gated blocks and blocks at level ``inner``) go first, the units
            then being cut to the budget. ``None``: none when ``scores`` has unit scores,
            otherwise (``depth``) as many as bring the cost closest to ``target``.
        normalize: divide each group's scores by their mean before ranking across groups
            (scores of different layers differ in scale).

    Raises:
        ImportanceError: neither unit nor usable block scores, or ``remove_blocks`` larger than
            the blocks scored.
    """
    target = resolution.policy.target.fraction if target is None else float(target)
    metric = resolution.policy.target.metric if metric is None else metric
    cost_model = CostModel(analysis) if cost_model is None else cost_model
    if metric == "latency" and cost_model.latency is None:  # the policy's table (cached, else measured)
        from gdp_graph.latency import attach_latency, load_or_build
        attach_latency(cost_model, load_or_build(analysis, resolution.policy.latency, cost_model=cost_model))
    gated = set(resolution.gated_groups())
    units = {gid: s for gid, s in scores.units.items() if gid in gated}
    allowed = set(resolution.gated_blocks()) | set(resolution.inner_blocks)
    ranked = [b for b in scores.ranked_blocks() if b in allowed]
    if not units and not ranked:
        raise ImportanceError(f"one-shot plan from {scores.method!r} scores: no gated group has unit scores and no "
                              "block the policy lets go has a block score (set defaults.block_level: block to "
                              "remove whole blocks)")
    if remove_blocks is not None and not 0 <= remove_blocks <= len(ranked):
        raise ImportanceError(f"one-shot plan: remove_blocks={remove_blocks} but {len(ranked)} removable block(s) "
                              "have scores")
    if remove_blocks is None and not units:
        return _blocks_to_budget(analysis, cost_model, resolution, ranked, target, metric)
    removed = frozenset(ranked[: remove_blocks or 0])
    return plan_for_budget(analysis, cost_model, resolution, units, target, metric=metric, normalize=normalize,
                           removed_blocks=removed)


def _blocks_to_budget(analysis: Analysis, cost_model: CostModel, resolution: Resolution, ranked: list[int],
                      target: float, metric: str) -> tuple[PruningPlan, float]:
    """The prefix of ``ranked`` (least important first) whose removal keeps closest to ``target``
    (the first such prefix: fewer blocks on a tie)."""
    best: Optional[tuple[float, PruningPlan, float]] = None
    for k in range(len(ranked) + 1):
        plan = PruningPlan(keep={}, removed_blocks=frozenset(ranked[:k]))
        kept = plan_fraction(cost_model, plan, metric)
        if best is None or abs(kept - target) < best[0]:
            best = (abs(kept - target), plan, kept)
        if kept <= target:
            break
    assert best is not None
    return best[1], best[2]


def one_shot_to_latency(analysis: Analysis, scores: Scores, resolution: Resolution, cost_model: CostModel,
                        original: nn.Module, *,
                        target: Optional[float] = None, settings: Any = None, corrections: Optional[int] = None,
                        measure: Optional[Callable[[PruningPlan], tuple[nn.Module, Measured]]] = None,
                        build: Optional[Callable[[PruningPlan], nn.Module]] = None, rounds: int = 15, repeat: int = 2,
                        on_round: Optional[Callable[[LoopRound], None]] = None) -> LoopResult:
    """The one-shot plan of ``scores`` to ``target`` (default: the policy's) of the *measured*
    latency: :func:`close_loop` around :func:`gdp_graph.importance.one_shot_plan` on
    ``cost_model``'s latency table. ``settings`` and ``corrections`` default to the policy's
    ``latency:`` section, the stopping tolerance is ``target.tolerance``; ``build`` defaults to
    :func:`gdp_graph.prune.rewrite.rewrite` (the model's own class where it verifies),
    ``measure`` to :func:`latency_measure` against ``original`` on the analysis' inputs."""
    from gdp_graph.prune.rewrite import rewrite
    policy = resolution.policy
    settings = settings or policy.latency
    target = policy.target.fraction if target is None else float(target)
    corrections = settings.corrections if corrections is None else corrections
    build = build or (lambda plan: rewrite(analysis, plan).eval())
    measure = measure or latency_measure(original, build, analysis.traced.example_inputs, settings, rounds=rounds,
                                         repeat=repeat)

    def plan_at(aim: float) -> tuple[PruningPlan, float]:
        return one_shot_plan(analysis, scores, resolution, aim, metric="latency", cost_model=cost_model)
    return close_loop(target, plan_at, measure, corrections=corrections, tolerance=policy.target.tolerance,
                      on_round=on_round)
