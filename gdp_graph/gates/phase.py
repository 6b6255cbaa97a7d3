"""The gated phase's timetable and its collaborators, built from a policy: when epsilon moves and
when the gates are cut (:class:`GatedPhase`), what the cost is measured in (:func:`cost_model_for`)
and who steers lambda (:func:`lambda_controller`). :class:`~gdp_graph.gates.model.GatedModel`
only wires them together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from gdp_graph.gates.bank import GateError
from gdp_graph.gates.budget import BudgetController
from gdp_graph.gates.lagrangian import LagrangianController
from gdp_graph.gates.schedule import EpsilonRamp, fit_to_window, in_updates
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import CostModel
from gdp_graph.policy import Policy

__all__ = ["GatedPhase", "cost_model_for", "lambda_controller"]


@dataclass(frozen=True)
class GatedPhase:
    """When things happen during the gated phase.

    Attributes:
        kind: the gate function (``smoothed_l0`` for the ``gdp`` regularizer, else ``clamped``).
        unit: what the schedules step in (``iteration`` or ``epoch``: ``regularizer.epsilon.step``).
        steps_per_epoch: iterations per epoch, where known.
        length: the phase in ``unit`` (None: not known, no schedule).
        fix_step: the ``unit`` count at which the gates are cut (``regularizer.fix_at``).
        epsilon_start: epsilon at step 0 (1 for clamped gates).
        epsilon_schedule: epsilon's ramp over the gates' window (smoothed-L0 gates with a length).
    """

    kind: str
    unit: str
    steps_per_epoch: Optional[int]
    length: Optional[int]
    fix_step: Optional[int]
    epsilon_start: float
    epsilon_schedule: Optional[EpsilonRamp]

    @classmethod
    def of(cls, policy: Policy, *, total_steps: Optional[int], steps_per_epoch: Optional[int],
           init_gate: float, gate_lr: float) -> "GatedPhase":
        """The timetable of ``policy``'s regularizer over ``total_steps`` training iterations.

        Raises:
            GateError: a length that is not a positive int, an epoch schedule without
                ``steps_per_epoch``, a ``gdp`` regularizer without an epsilon schedule.
        """
        reg = policy.regularizer
        steps_per_epoch = _positive_or_none(steps_per_epoch, "steps_per_epoch")
        total_steps = _positive_or_none(total_steps, "total_steps")
        kind = "smoothed_l0" if reg.name == "gdp" else "clamped"
        unit = reg.epsilon.step if reg.epsilon is not None else "iteration"
        length = _length(total_steps, unit, steps_per_epoch)
        fix_step = None if length is None else max(1, round(reg.fix_at * length))
        curve, ramp = reg.epsilon, None
        if kind == "smoothed_l0":
            if curve is None:
                raise GateError("the gdp regularizer needs an epsilon schedule (regularizer.epsilon)")
            if fix_step is not None:
                # epsilon.max_travel: theta starts low enough to reach 0 within the gates' window
                # epsilon.end_at: epsilon reaches its end (the gates polarize) before the cut
                window = max(1, round(curve.end_at * fix_step))
                gate_steps = window * (steps_per_epoch if unit == "epoch" else 1)
                curve = fit_to_window(curve, init_gate=init_gate, gate_lr=gate_lr, steps=gate_steps)
                ramp = EpsilonRamp(curve, window)
        start = curve.start if kind == "smoothed_l0" else 1.0
        return cls(kind, unit, steps_per_epoch, length, fix_step, start, ramp)


def _length(total_steps: Optional[int], unit: str, steps_per_epoch: Optional[int]) -> Optional[int]:
    """The gated phase in the unit the schedules step in (iterations or epochs)."""
    if total_steps is None:
        return None
    if unit == "epoch":
        if steps_per_epoch is None:
            raise GateError("regularizer.epsilon.step is 'epoch': pass steps_per_epoch= to attach() so that the "
                            "schedule knows how many epochs training lasts")
        return max(1, total_steps // steps_per_epoch)
    return total_steps


def _positive_or_none(value: Optional[int], name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GateError(f"{name} must be a positive int, got {value!r}")
    return value


def cost_model_for(analysis: Analysis, policy: Policy) -> CostModel:
    """The cost model of ``analysis``, with the latency table measured on ``policy.latency``'s
    device (cached) when the target metric is latency."""
    cost_model = CostModel(analysis)
    if policy.target.metric == "latency":
        from gdp_graph.latency import attach_latency, load_or_build
        attach_latency(cost_model, load_or_build(analysis, policy.latency, cost_model=cost_model))
    return cost_model


def lambda_controller(policy: Policy, phase: GatedPhase) -> Optional[BudgetController | LagrangianController]:
    """The controller that steers lambda to the target (``lambda_controller.kind``: ``proportional``
    or ``lagrangian``), its deadline the end of epsilon's ramp where ``lambda_controller.deadline``
    asks; None for a constant lambda."""
    reg = policy.regularizer
    ctrl = reg.lambda_controller
    if ctrl.kind not in ("proportional", "lagrangian"):
        return None
    deadline = None if not ctrl.deadline or phase.epsilon_schedule is None else in_updates(
        phase.epsilon_schedule.total_steps, phase.unit, ctrl.step, phase.steps_per_epoch)
    if ctrl.kind == "lagrangian":
        return LagrangianController(policy.target.fraction, metric=policy.target.metric, lambda_init=reg.lambda_,
                                    tolerance=policy.target.tolerance, gain=ctrl.gain, lambda_min=ctrl.min,
                                    lambda_max=ctrl.max,
                                    deadline=None if deadline is None else max(deadline, 1))
    gain = ctrl.gain if deadline is None else max(ctrl.gain, math.log(10.0) / max(deadline, 1))
    return BudgetController(policy.target.fraction, metric=policy.target.metric, lambda_init=reg.lambda_,
                            tolerance=policy.target.tolerance, gain=gain, lambda_min=ctrl.min, lambda_max=ctrl.max,
                            deadline=deadline)
