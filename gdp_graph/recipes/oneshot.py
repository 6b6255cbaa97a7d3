"""One-shot pruning for ``gdp-graph prune --method magnitude|activation|taylor|depth``: score the
units (or, for ``depth``, only the removable blocks) with :mod:`gdp_graph.importance` on the
TASK's training batches, cut to the policy's budget, and rewrite. No gate is trained; recovery
(fine-tuning, distillation) is the driver's, the same for every method."""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import nn

from gdp_graph.importance.common import METHODS
from gdp_graph.recipes.task import Task, model_inputs

__all__ = ["ONE_SHOT_METHODS", "one_shot_prune"]

#: methods without a gate phase (``gdp`` is the gated one): the importance methods
ONE_SHOT_METHODS = METHODS


def _feed(task: Task):
    """How a TASK batch feeds the model, in the importance package's form (a dict or a tuple)."""
    def inputs(batch: Any) -> Any:
        args, kwargs = model_inputs(task, batch)
        return kwargs if kwargs else args
    return inputs


def one_shot_prune(model: nn.Module, inputs: Any, task: Task, policy: Any, method: str, *,
                   calibration_batches: int = 8) -> tuple[fx.GraphModule, Any, Any]:
    """(pruned GraphModule, a :class:`~gdp_graph.gates.finalize.FinalizeReport`, the analysis)
    for ``method`` on ``model`` (analysed on ``inputs``; left untouched). The report's check
    compares the pruned model with the gated reference: exact plans are equal, a plan that
    removes hidden channels through a norm (allowed by the policy) reports its difference."""
    from gdp_graph.gates.finalize import FinalizeReport
    from gdp_graph.graph.analysis import analyze
    from gdp_graph.graph.cost import CostModel
    from gdp_graph.importance import one_shot_plan, score_units
    from gdp_graph.policy import resolve
    from gdp_graph.prune.rewrite import rewrite
    from gdp_graph.prune.verify import verify
    from gdp_graph.recipes.recovery import cycle
    if method not in ONE_SHOT_METHODS:
        raise ValueError(f"unknown one-shot method {method!r}: expected one of {', '.join(ONE_SHOT_METHODS)}")
    analysis = analyze(model, inputs, count_flops=True)
    resolution = resolve(policy, analysis.groups, analysis.blocks)
    batches = None if method == "magnitude" else cycle(task.train_loader, calibration_batches)
    scores = score_units(analysis, method, batches, task.loss, inputs=_feed(task), max_batches=calibration_batches)
    cost_model = CostModel(analysis)
    if method == "depth":
        plan = whole_layers_plan(analysis, scores.blocks, resolution, cost_model, policy.target)
    else:
        plan, _ = one_shot_plan(analysis, scores, resolution, metric=policy.target.metric, cost_model=cost_model)
    pruned = rewrite(analysis, plan, keep_class=False)
    check = verify(analysis, plan, pruned)
    report = FinalizeReport(plan=plan, check=check, threshold=0.0, before=cost_model.total,
                            after=cost_model.plan_cost(plan.keep, sorted(plan.removed_blocks)),
                            removed_units=plan.removed_counts(analysis))
    return pruned, report, analysis


def kept_fraction(report: Any, metric: str) -> float:
    """The share of ``metric`` a finalize report's model keeps."""
    before = report.before.metric(metric)
    return report.after.metric(metric) / before if before else 1.0


def whole_layers_plan(analysis: Any, block_scores: Any, resolution: Any, cost_model: Any, target: Any) -> Any:
    """Remove whole layers, least important first, until the cost is closest to the target. A
    layer is every removable block of one module (a decoder layer's attention and MLP
    branches), scored by the sum of its blocks' scores; it goes only when the policy lets every
    one of its blocks go (half a layer has no form in a Hugging Face config)."""
    from gdp_graph.gates.selection import plan_fraction
    from gdp_graph.prune.plan import PruningPlan
    allowed = set(resolution.gated_blocks()) | set(resolution.inner_blocks)
    layers: dict[str, list[int]] = {}
    for b in analysis.blocks:
        layers.setdefault(b.name, []).append(b.id)
    ranked = sorted((sum(float(block_scores[b]) for b in ids), name) for name, ids in layers.items()
                    if all(b in allowed and b in block_scores for b in ids))
    best, removed = None, []
    for _, name in [(0.0, None), *ranked]:
        removed = removed + (layers[name] if name is not None else [])
        plan = PruningPlan(keep={}, removed_blocks=frozenset(removed))
        kept = plan_fraction(cost_model, plan, target.metric)
        if best is None or abs(kept - target.fraction) < best[0]:
            best = (abs(kept - target.fraction), plan)
        if kept <= target.fraction:
            break
    return best[1]
