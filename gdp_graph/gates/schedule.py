"""When the gates' smoothing constant epsilon takes which value during the gated phase.

The curve itself (start, end, shape) is the policy's
:class:`gdp_graph.policy.EpsilonSchedule`; :class:`EpsilonRamp` lays it over a number of steps
(iterations or epochs, whatever the caller counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gdp_graph.gates.bank import GateError
from gdp_graph.policy import EpsilonSchedule
from gdp_graph.vocabulary import SCHEDULES

__all__ = ["EpsilonRamp"]


@dataclass(frozen=True)
class EpsilonRamp:
    """``curve`` from its start at step 0 to its end at step ``total_steps`` (and after).

    >>> EpsilonRamp(EpsilonSchedule(1.0, 1e-4, "exponential"), 100).value(50)  # geometric midpoint
    0.01
    """

    curve: EpsilonSchedule
    total_steps: int

    def __post_init__(self) -> None:
        c = self.curve
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (c.start, c.end)):
            raise GateError(f"epsilon start and end must be finite and > 0, got {c.start!r} and {c.end!r}")
        if c.schedule not in SCHEDULES:
            raise GateError(f"unknown epsilon schedule {c.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise GateError(f"the epsilon schedule needs total_steps >= 1, got {self.total_steps!r}")

    def value(self, step: int) -> float:
        """Epsilon after ``step`` steps."""
        return self.curve.value(step / self.total_steps)

    __call__ = value
