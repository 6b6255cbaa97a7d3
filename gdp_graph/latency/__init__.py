"""Latency measured on the user's own device, as a budget metric.

The model's own layers are timed node by node inside the model rewritten at a grid of kept
widths (every prunable group keeping the same fraction of its units, rounded to ``round_to``);
everything the nodes do not account for is a remainder measured on the whole model. Each node's
latency is then a function of its *scale* (the product of the kept fractions of the channels it
consumes and produces, the cost model's FLOPs scale), fitted to what was measured: monotone,
piecewise linear, no FLOPs formula. Small widths, memory-bound ops and per-op overhead are in the
table because they were measured.

    table = load_or_build(analysis, LatencySettings(threads=1, batch=1))   # cached on disk
    cost_model = CostModel(analysis)
    attach_latency(cost_model, table)
    cost_model.plan_cost(plan.keep, plan.removed_blocks).latency          # predicted seconds

With a table attached, every consumer of a metric name takes ``"latency"``: the ``gdp``
regularizer, the lambda controller, the cut at ``fix_at``, the one-shot plans. A one-shot plan
to a latency target can close the loop on the device (:mod:`gdp_graph.latency.loop`): the pruned
model is timed against the original and the fraction aimed at corrected by what was measured.
"""

from gdp_graph.latency.build import LatencyError, build_table, grid_plan
from gdp_graph.latency.cache import fingerprint, load_or_build, table_key
from gdp_graph.latency.fit import LatencyFit, attach_latency, latency_cost_model
from gdp_graph.latency.loop import LoopResult, LoopRound, Measured, close_loop, cut_measure
from gdp_graph.latency.table import LatencyTable
from gdp_graph.latency.timing import ClockTimer, NodeTimer, Timer, default_timer
from gdp_graph.policy.schema import LatencySettings

__all__ = ["ClockTimer", "LatencyError", "LatencyFit", "LatencySettings", "LatencyTable", "LoopResult", "LoopRound",
           "Measured", "NodeTimer", "Timer", "attach_latency", "close_loop", "cut_measure", "default_timer",
           "build_table", "fingerprint", "grid_plan", "latency_cost_model", "load_or_build", "table_key"]
