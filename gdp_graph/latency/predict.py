"""What the table predicts for a plan, beside what is measured (``gdp-graph report --predict``,
``gdp-graph check --metric latency``, the latency benchmark)."""

from __future__ import annotations

from typing import Any, Optional

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import CostModel
from gdp_graph.latency.cache import load_or_build
from gdp_graph.latency.fit import attach_latency
from gdp_graph.policy.schema import LatencySettings
from gdp_graph.prune.plan import PruningPlan


def predict_plan(analysis: Analysis, plan: PruningPlan, settings: Optional[LatencySettings] = None, *,
                 show_progress: bool = True, console: Any = None, cost_model: Optional[CostModel] = None
                 ) -> dict[str, Any]:
    """Predicted seconds of the original and of ``plan`` (the table from the cache, else measured
    now), their ratio, and the table's settings and build time."""
    settings = settings or LatencySettings()
    cost_model = cost_model or CostModel(analysis)
    if cost_model.latency is None:
        table = load_or_build(analysis, settings, cost_model=cost_model, show_progress=show_progress, console=console)
        attach_latency(cost_model, table)
    before = cost_model.total.latency
    after = cost_model.plan_cost(plan.keep, sorted(plan.removed_blocks)).latency
    assert before is not None and after is not None
    table = cost_model.latency.table  # type: ignore[union-attr]
    return {"before_ms": 1e3 * before, "after_ms": 1e3 * after, "ratio": after / before if before > 0 else 1.0,
            "threads": settings.threads, "batch": settings.batch, "device": settings.device,
            "table_build_s": table.build_s}
