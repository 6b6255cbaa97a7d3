"""The words every stage shares, defined once: budget metrics, regularizer names, schedule
curves, and the one annealing formula that epsilon schedules and learning-rate schedules use.

This module imports nothing from the package, so every stage (graph, prune, policy, gates,
recipes, cli) may import it without creating a cycle.
"""

from __future__ import annotations

import math

__all__ = ["METRICS", "REGULARIZERS", "PRICES", "SCHEDULES", "STEPS", "DEFAULT_T", "anneal", "half_cosine"]

#: what a budget counts: ``FlopCounterMode`` FLOPs, parameter counts, or latency measured on the
#: device (``gdp_graph.latency``: a table timed on the model itself)
METRICS = ("flops", "params", "latency")
#: the sparsity regularizers on the gates (``gdp_graph.gates.regularizers`` implements them)
REGULARIZERS = ("gdp", "polarization", "l1")
#: what the gdp penalty prices a unit at: its share of the target metric (``cost``, the paper's
#: bilinear FLOPs) or one unit whatever it costs (``units``, the paper's plain L0 count)
PRICES = ("cost", "units")
#: annealing curves from a start value to an end value
SCHEDULES = ("exponential", "linear", "cosine")
#: how often a schedule moves
STEPS = ("iteration", "epoch")
#: polarization's ``t`` (Zhuang et al., NeurIPS 2020) when a policy does not set it
DEFAULT_T = 1.2


def half_cosine(progress: float) -> float:
    """Half a cosine from 1 at ``progress`` 0 down to 0 at 1 (clamped outside [0, 1])."""
    p = min(max(progress, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * p))


def anneal(start: float, end: float, progress: float, kind: str = "cosine") -> float:
    """The value ``progress`` (clamped to [0, 1]) of the way from ``start`` to ``end`` along
    ``kind``: ``exponential`` (geometric), ``linear`` or ``cosine`` (:func:`half_cosine`).

    >>> anneal(1.0, 1e-4, 0.5, "exponential")
    0.01
    """
    p = min(max(progress, 0.0), 1.0)
    if p >= 1.0:
        return float(end)
    if kind == "linear":
        return start + (end - start) * p
    if kind == "cosine":
        return end + (start - end) * half_cosine(p)
    if kind == "exponential":
        return start * (end / start) ** p
    raise ValueError(f"unknown schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
