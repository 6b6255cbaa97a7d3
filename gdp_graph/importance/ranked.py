"""Gates that start ranked by one-shot importance (policy key ``regularizer.init``): the scores
of :func:`~gdp_graph.importance.score_units` handed to :func:`gdp_graph.gates.init.init_from_scores`."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from gdp_graph.gates.init import init_from_scores
from gdp_graph.gates.model import GatedModel
from gdp_graph.importance.common import ImportanceError, InputsFn, LossFn, Scores
from gdp_graph.importance.scores import score_units

__all__ = ["init_gates"]

#: batches scored for a data-driven init (a few suffice to rank units; more cost time)
INIT_BATCHES = 8


def init_gates(gated: GatedModel, batches: Optional[Iterable[Any]] = None, loss_fn: Optional[LossFn] = None, *,
               inputs: Optional[InputsFn] = None, max_batches: int = INIT_BATCHES) -> Optional[Scores]:
    """Start ``gated``'s gates as its policy's ``regularizer.init`` says (call it right after
    :func:`~gdp_graph.attach`, before training): ``uniform`` leaves them as they are and returns
    None; ``magnitude`` needs nothing, ``activation`` calibration ``batches``, ``taylor``
    task ``batches`` and ``loss_fn(output, batch)``. Returns the scores used.

    Raises:
        ImportanceError: the method needs batches or a loss that were not given.
    """
    reg = gated.policy.regularizer
    if reg.name != "gdp" or reg.init == "uniform":
        return None
    if reg.init != "magnitude" and batches is None:
        raise ImportanceError(f"regularizer.init: {reg.init} scores units on data: pass batches (and for taylor "
                              "loss_fn) to init_gates, or use init: magnitude")
    scores = score_units(gated.analysis, reg.init, batches, loss_fn, inputs=inputs, max_batches=max_batches)
    init_from_scores(gated, scores.units, reg.init_spread, per_group=reg.init_rank == "group")
    return scores
