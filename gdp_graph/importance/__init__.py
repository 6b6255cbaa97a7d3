"""One-shot importance: per-unit (and per-block) scores on the analysis graph of any model, and
a pruning plan to a budget from them.

    scores = score_units(analysis, "taylor", loader, loss_fn, max_batches=8)
    plan, kept = one_shot_plan(analysis, scores, resolution, target=0.5)
    smaller = gdp_graph.rewrite(analysis, plan)

Methods: ``magnitude`` (weights only), ``activation`` (calibration batches), ``taylor`` (task
batches and a loss), ``depth`` (block importance from calibration batches); see
:mod:`gdp_graph.importance.scores`. This stage comes after ``gates``: it reuses the gates'
budget selection (:mod:`gdp_graph.gates.selection`) and gate bank; nothing in ``gates``
imports it. :func:`init_gates` starts a gated model's gates ranked by importance (policy key
``regularizer.init``).
"""

from gdp_graph.importance.plan import one_shot_plan, one_shot_to_latency
from gdp_graph.importance.ranked import init_gates
from gdp_graph.importance.scores import METHODS, ImportanceError, Scores, magnitude_scores, score_units

__all__ = ["METHODS", "ImportanceError", "Scores", "init_gates", "magnitude_scores", "one_shot_plan",
           "one_shot_to_latency", "score_units"]
