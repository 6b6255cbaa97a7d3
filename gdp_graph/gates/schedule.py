"""When the gates' smoothing constant epsilon takes which value during the gated phase.

The curve itself (start, end, shape) is the policy's
:class:`gdp_graph.policy.EpsilonSchedule`; :class:`EpsilonRamp` lays it over a number of steps
(iterations or epochs, whatever the caller counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from gdp_graph.gates.bank import GateError
from gdp_graph.policy import EpsilonSchedule
from gdp_graph.vocabulary import SCHEDULES

__all__ = ["EpsilonRamp", "fit_to_window", "in_updates"]


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


def fit_to_window(curve: EpsilonSchedule, *, init_gate: float, gate_lr: float, steps: int) -> EpsilonSchedule:
    """``curve`` with its start lowered so that the gates can travel within ``steps`` (the
    iterations they train before ``fix_at``); ``curve`` itself (the same object) when
    ``curve.max_travel`` is not set or the window is long enough.

    A smoothed-L0 gate starts at ``theta_start = sqrt(start * g0 / (1 - g0))`` and its value
    barely moves until Adam, which moves ``theta`` by about ``gate_lr`` per step, has brought
    ``theta`` down to about ``sqrt(epsilon)``: ``theta_start / gate_lr`` steps of dead time,
    during which no cost moves. When that exceeds ``max_travel * steps`` the gates cannot
    polarize before they are cut, so ``theta_start`` is lowered to ``max_travel * gate_lr *
    steps`` (``start`` to ``theta_start^2 (1 - g0) / g0``; every gate still starts at ``g0``).

    >>> curve = fit_to_window(EpsilonSchedule(1e-2, 1e-8, "cosine", max_travel=0.5), init_gate=0.99,
    ...                       gate_lr=0.02, steps=50)
    >>> round(curve.start, 8)  # theta_start 0.5 instead of 0.995
    0.00252525
    """
    if curve.max_travel is None:
        return curve
    if not (math.isfinite(gate_lr) and gate_lr > 0) or steps < 1:
        raise GateError(f"fitting epsilon to the gates' window needs gate_lr > 0 and steps >= 1, got {gate_lr!r} "
                        f"and {steps!r}")
    theta_start = math.sqrt(curve.start * init_gate / (1.0 - init_gate))
    theta_cap = curve.max_travel * gate_lr * steps
    if theta_start <= theta_cap:
        return curve
    start = theta_cap ** 2 * (1.0 - init_gate) / init_gate
    if start <= curve.end:
        raise GateError(f"epsilon.max_travel {curve.max_travel:g}: {steps} gate steps at learning rate {gate_lr:g} "
                        f"would need epsilon to start at {start:.3g}, not above its end {curve.end:g}")
    return replace(curve, start=start)


def in_updates(steps: int, unit: str, update_unit: str, steps_per_epoch: Optional[int]) -> int:
    """``steps`` counted in ``unit`` (``iteration`` or ``epoch``) as a number of updates made
    every ``update_unit`` (e.g. epsilon's ramp, stepped per epoch, for a controller updated per
    iteration: ``lambda_controller.deadline``)."""
    if unit == "epoch" and update_unit == "iteration":
        return steps * (steps_per_epoch or 1)
    if unit == "iteration" and update_unit == "epoch":
        return max(1, steps // (steps_per_epoch or 1))
    return steps
