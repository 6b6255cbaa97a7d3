"""Steering the regularization strength lambda so that training lands on a cost budget.

The quantity that matters is the *hard fraction*: the share of the original cost (FLOPs or
parameters) that remains when every gate ``<= threshold`` is removed, i.e. what finalizing the
gates removes (:func:`hard_fraction`). The *soft fraction* is the same cost written from the
gates as they are (:func:`soft_fraction`, the value of the ``gdp`` regularizer).

Controller (:class:`BudgetController`)
--------------------------------------
Integral control of ``log(lambda)`` on the gap between the hard fraction and the target, with a
dead band, a saturated error and a look-ahead that stops lambda from winding up while the gates
are still on their way. At every :meth:`~BudgetController.update`::

    gap       = hard - target
    error     = clamp(gap / span, -1, 1)                          (0 inside the band |gap| <= tolerance)
    predicted = hard + horizon * slope                            (slope: smoothed change per update)
    remaining = clamp((predicted - target) / gap, 0, 1)           (share of the gap not yet on its way)
    lambda   <- clamp(lambda * exp(gain * error * remaining), lambda_min, lambda_max)

* **Above the band** lambda grows, by up to ``gain`` per update in log space (full speed while
  more than ``span`` away). The hard count only moves when gates actually cross the threshold,
  well after lambda moved them, so pure integral control winds lambda up during that lag and
  overshoots. ``slope`` is the exponentially smoothed (``smoothing``) per-update change of the
  soft fraction (of the hard fraction when no soft one is given); it falls as soon as gates
  start moving. When the fraction is falling fast enough to close the gap within ``horizon``
  updates, ``remaining`` is 0 and lambda holds. Only the soft fraction's *trend* is used, not
  its level: early in GDP training (epsilon large) every gate is below 1, so the soft level says
  little about what will be removed, but it still drops first when gates head to zero.
* **Dead time.** A smoothed-L0 gate barely moves until its ``theta`` (moved by Adam at about
  the learning rate per step) has come down to about ``sqrt(epsilon)``: from ``theta`` near 1
  that is ~45 steps at the default rate, during which neither fraction moves and lambda winds
  up at full speed. When the gated phase is short this wind-up outlasts the gates' training:
  they all fall together and the cut keeps gates stuck near 0. ``update(..., lead=...)`` feeds
  the look-ahead from a quantity that moves from the first step instead (``GatedModel`` passes
  its *travel fraction*, the cost written from ``min(theta / theta_start, 1)``, with policy key
  ``lambda_controller.lead: travel``): lambda holds as soon as enough of the cost is on its way
  down, whether or not the gates have moved yet. It is an option, not the default: held
  lower, lambda leaves the gates' Adam steps noisier (the price no longer dominates the task
  gradient) and fewer gates reach zero before the cut; on the CIFAR benchmark (70 gate steps)
  the soft cost was still 0.85 at the cut and the held-out accuracy 2.7 points lower
  (benchmarks/results/cifar_gdp_tuning.json, e11), on the short preset (47 gate steps) it was
  0.95 points higher on its held-out split.
* **Deadline.** In a short window the look-ahead's memory outlives the window: after a fast
  fall (the gates polarizing) the smoothed slope still predicts the target ``horizon`` updates
  ahead, so lambda holds while the fraction drifts back up and the cut, not the gates, decides.
  With ``deadline`` (the update by which the gates should have settled; policy key
  ``lambda_controller.deadline: true`` passes epsilon's end), the look-ahead reaches no further
  than that update (``min(horizon, deadline - step)``, 0 after it: plain integral control on
  the gap), and ``GatedModel`` raises ``gain`` to ``ln(10) / deadline`` when that is larger, so
  that lambda can cover a factor 10 within the window.
* **Below the band** (overshoot) lambda decays by the same law, so gates pushed too far can
  recover; the look-ahead stops the decay once the fraction is rising back fast enough.
* **Inside the band** lambda is held. ``reached`` records the first time the hard fraction was
  at or below ``target + tolerance``.

Defaults: ``gain = 0.01`` per update (lambda covers a factor 10 in about 230 updates at full
speed), ``horizon = 3 / gain`` (300 updates), ``smoothing = 0.9``, ``span = 0.2``,
``tolerance = 0.02``, ``lambda_min = 1e-6``, ``lambda_max = 10``: the ``gdp`` penalty is a
fraction of the model's cost, in [0, 1], so lambda is in units of task loss per whole model.
Call :meth:`~BudgetController.update` every iteration; when updating every ``k`` iterations or
every epoch, scale ``gain`` up and ``horizon`` down accordingly. For the control to settle
without overshooting, ``horizon`` should cover the lag between lambda and the hard count (how
many updates gates take to travel to zero), and lambda must get there while the gates can still
move (before epsilon is small): with ``lambda_init`` a factor ``F`` away from the needed value,
the ramp takes about ``ln(F) / gain`` updates.

Measured (tests/test_budget.py). On simulated plants (dead time up to 60 updates, first-order
lag, a hard count lagging the soft one by 20 updates, recovery 4-8x slower than pruning, noise,
a steep response, a lambda scale of 0.3 or 3), targets 0.3, 0.5 and 0.7 are reached within
about 1800 updates from lambda 1e-4 and held: the true fraction stays inside the band for the
whole last fifth of a 4000-update run and never falls below ``target - tolerance`` after
reaching it (``OVERSHOOT_BOUND`` = 0.01 is the asserted bound). A look-ahead of 0 on the
long-lag plant falls 0.24 below the band. A simulated GDP gate training (theta in [0, 1],
Adam, epsilon cosine-annealed 1e-2 -> 1e-8, noisy task term; 800 updates, gain 0.02,
lambda_init 1e-2) on resnet_basic, mobilenetv2 and vit lands at 0.5 FLOPs within 0.028 in all
18 runs (3 models x 6 seeds; mean error 0.014); single units of these small models carry up
to 2-4% of the FLOPs, which bounds what any controller can hit.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from gdp_graph.graph.cost import CostModel
from gdp_graph.vocabulary import METRICS

__all__ = ["BudgetController", "hard_fraction", "soft_fraction", "OVERSHOOT_BOUND"]

#: how far (in fractions of the original cost) the true fraction may fall below
#: ``target - tolerance`` after first reaching the band, on the plants of tests/test_budget.py
OVERSHOOT_BOUND = 0.01
_SLACK = 1e-9  # band edges are inclusive despite rounding (0.52 - 0.5 > 0.02 in floats)


# -- measuring ----------------------------------------------------------------------------------
def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(map(repr, METRICS))}")


def _fraction(cost_model: CostModel, group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor],
              metric: str) -> float:
    """Cost of the given gates as a fraction of the total, in float64 on the CPU."""
    total = cost_model.total.metric(metric)
    if not total > 0:
        return 1.0
    with torch.no_grad():
        flat = {gid: g.detach().reshape(-1).cpu() for gid, g in group_gates.items()}
        units = cost_model.gate_vector(flat, torch.float64)
        blocks = {bid: g.detach().reshape(()).cpu().double() for bid, g in block_gates.items()}
        value = float(cost_model.evaluate_metric(units, blocks, metric)) / total
    return min(max(value, 0.0), 1.0)


def hard_fraction(cost_model: CostModel, group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor],
                  *, threshold: float, metric: str) -> float:
    """Remaining share of the original ``metric`` when every gate ``<= threshold`` counts as
    removed (units and whole blocks), in [0, 1].

    Equals ``plan_cost(keep, removed_blocks).metric(metric) / total`` for the plan that keeps
    the units (blocks) whose gates are above the threshold. Rounding rules that finalizing
    applies on top (``min_channels``, ``round_to``) are not applied here.
    """
    _check_metric(metric)
    if not (math.isfinite(threshold) and 0.0 <= threshold < 1.0):
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    kept = {gid: (g.detach() > threshold).double() for gid, g in group_gates.items()}
    kept_blocks = {bid: (g.detach() > threshold).double() for bid, g in block_gates.items()}
    return _fraction(cost_model, kept, kept_blocks, metric)


def soft_fraction(cost_model: CostModel, group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor],
                  *, metric: str) -> float:
    """Remaining share of the original ``metric`` written from the gates as they are (the
    value of the ``gdp`` regularizer, without gradient), in [0, 1]."""
    _check_metric(metric)
    return _fraction(cost_model, group_gates, block_gates, metric)


# -- steering -----------------------------------------------------------------------------------
def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class BudgetController:
    """Steers lambda so that the hard fraction reaches ``target`` and stays within
    ``tolerance`` of it (see the module docstring for the control law).

    Parameters
    ----------
    target: fraction of the original ``metric`` to keep, in (0, 1].
    metric: ``"flops"`` or ``"params"`` (recorded; the caller measures the fractions).
    lambda_init: starting lambda, in [lambda_min, lambda_max] and > 0.
    tolerance: half width of the dead band around the target, in [0, 1).
    gain: largest change of log(lambda) per update, > 0.
    lambda_min, lambda_max: clamp of lambda, 0 <= lambda_min <= lambda_max, lambda_max > 0.
    horizon: look-ahead in updates, >= 0 (None: ``3 / gain``); 0 disables it.
    smoothing: weight of the past in the smoothed slope, in [0, 1).
    span: gap (in fractions of the original cost) from which lambda moves at full speed, > 0.
    deadline: the update by which the gates should have settled, >= 0 (None: no deadline); the
        look-ahead reaches no further (see the module docstring).

    Raises ``ValueError`` naming the first invalid argument.

    Example::

        ctrl = BudgetController(0.5)
        for step in range(steps):
            loss = task + ctrl.lam * reg(group_gates, block_gates)
            ...
            ctrl.update(step, hard_fraction(cm, group_gates, block_gates, threshold=1e-6, metric="flops"),
                        soft_fraction(cm, group_gates, block_gates, metric="flops"))
    """

    def __init__(self, target: float, *, metric: str = "flops", lambda_init: float = 1e-4, tolerance: float = 0.02,
                 gain: float = 0.01, lambda_min: float = 1e-6, lambda_max: float = 10.0,
                 horizon: Optional[float] = None, smoothing: float = 0.9, span: float = 0.2,
                 deadline: Optional[int] = None):
        _require(_finite(target) and 0.0 < target <= 1.0, f"target must be a fraction in (0, 1], got {target!r}")
        _check_metric(metric)
        _require(_finite(tolerance) and 0.0 <= tolerance < 1.0, f"tolerance must be in [0, 1), got {tolerance!r}")
        _require(_finite(gain) and gain > 0, f"gain must be a finite number > 0, got {gain!r}")
        _require(_finite(lambda_min) and lambda_min >= 0,
                 f"lambda_min must be a finite number >= 0, got {lambda_min!r}")
        _require(_finite(lambda_max) and lambda_max > 0, f"lambda_max must be a finite number > 0, got {lambda_max!r}")
        _require(lambda_min <= lambda_max, f"lambda_min ({lambda_min!r}) must not exceed lambda_max ({lambda_max!r})")
        _require(_finite(lambda_init) and lambda_init > 0 and lambda_min <= lambda_init <= lambda_max,
                 f"lambda_init must be > 0 and within [lambda_min, lambda_max] = [{lambda_min!r}, {lambda_max!r}], "
                 f"got {lambda_init!r}")
        horizon = 3.0 / gain if horizon is None else horizon
        _require(_finite(horizon) and horizon >= 0, f"horizon must be None or a finite number >= 0, got {horizon!r}")
        _require(_finite(span) and span > 0, f"span must be a finite number > 0, got {span!r}")
        _require(_finite(smoothing) and 0.0 <= smoothing < 1.0, f"smoothing must be in [0, 1), got {smoothing!r}")
        _require(deadline is None or (isinstance(deadline, int) and not isinstance(deadline, bool) and deadline >= 0),
                 f"deadline must be None or an int >= 0, got {deadline!r}")
        self.target = float(target)
        self.metric = metric
        self.tolerance = float(tolerance)
        self.gain = float(gain)
        self.lambda_min = float(lambda_min)
        self.lambda_max = float(lambda_max)
        self.horizon = float(horizon)
        self.span = float(span)
        self.smoothing = float(smoothing)
        self.deadline = deadline
        self.lam = float(lambda_init)
        self.reached = False
        self.history: list[dict] = []
        self._last: Optional[float] = None  # last measured fraction (soft if given, else hard)
        self._slope = 0.0  # smoothed change of that fraction per update

    _CONFIG = ("target", "metric", "tolerance", "gain", "lambda_min", "lambda_max", "horizon", "smoothing", "span",
               "deadline")

    # -- control ------------------------------------------------------------------------------
    def in_band(self, fraction: float) -> bool:
        """True when ``fraction`` is within ``tolerance`` of the target."""
        return abs(fraction - self.target) <= self.tolerance + _SLACK

    def horizon_at(self, step: Optional[int]) -> float:
        """The look-ahead at update ``step``: ``horizon``, cut at the ``deadline`` when set."""
        if self.deadline is None or step is None:
            return self.horizon
        return min(self.horizon, float(max(self.deadline - step, 0)))

    def rate(self, hard: float, step: Optional[int] = None) -> float:
        """The change of log(lambda) that one update at this hard fraction makes, given the
        current smoothed slope (and, with a ``deadline``, the update ``step``)."""
        gap = hard - self.target
        if self.in_band(hard):
            return 0.0
        predicted = hard + self.horizon_at(step) * self._slope
        remaining = min(max((predicted - self.target) / gap, 0.0), 1.0)
        error = min(max(gap / self.span, -1.0), 1.0)
        return self.gain * error * remaining

    def update(self, step: int, hard_fraction: float, soft_fraction: Optional[float] = None, *,
               lead: Optional[float] = None) -> float:
        """Record this step's fractions, move lambda, and return the new lambda.

        ``soft_fraction``, when given, feeds the look-ahead (give it always or never).
        ``lead``, when given, feeds it instead: a fraction that starts moving before the soft
        one does (the gates' travel, see :meth:`GatedModel.travel_fraction
        <gdp_graph.gates.model.GatedModel.travel_fraction>`), so that lambda stops growing
        while the gates are on their way but their values have not moved yet (give it always
        or never).
        """
        _require(isinstance(step, int) and not isinstance(step, bool), f"step must be an int, got {step!r}")
        _require(_finite(hard_fraction) and hard_fraction >= 0,
                 f"hard_fraction must be a finite number >= 0, got {hard_fraction!r}")
        _require(soft_fraction is None or (_finite(soft_fraction) and soft_fraction >= 0),
                 f"soft_fraction must be None or a finite number >= 0, got {soft_fraction!r}")
        _require(lead is None or (_finite(lead) and lead >= 0),
                 f"lead must be None or a finite number >= 0, got {lead!r}")
        hard = float(hard_fraction)
        soft = None if soft_fraction is None else float(soft_fraction)
        self.reached = self.reached or hard <= self.target + self.tolerance + _SLACK
        self._track(float(lead) if lead is not None else hard if soft is None else soft)
        self.lam = self._clamp(self.lam * math.exp(self.rate(hard, step)))
        record = {"step": step, "hard_fraction": hard, "soft_fraction": soft, "lambda": self.lam}
        if lead is not None:
            record["lead"] = float(lead)
        self.history.append(record)
        return self.lam

    def _clamp(self, lam: float) -> float:
        return min(max(lam, self.lambda_min), self.lambda_max)

    def _track(self, fraction: float) -> None:
        if self._last is not None:
            self._slope = self.smoothing * self._slope + (1.0 - self.smoothing) * (fraction - self._last)
        self._last = fraction

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume exactly: settings, lambda, ``reached``, the smoothed
        slope and the history."""
        state: dict[str, Any] = {k: getattr(self, k) for k in self._CONFIG}
        state.update(lam=self.lam, reached=self.reached, last=self._last, slope=self._slope,
                     history=[dict(h) for h in self.history])
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (settings included, as torch optimizers do)."""
        # "deadline" came later: a state saved before it has none
        missing = [k for k in (*self._CONFIG, "lam", "reached", "last", "slope", "history")
                   if k not in state and k != "deadline"]
        _require(not missing, f"budget controller state lacks {', '.join(missing)}")
        config = {k: state.get(k) for k in self._CONFIG if k != "target"}
        fresh = BudgetController(state["target"], lambda_init=state["lam"], **config)
        self.__dict__.update(fresh.__dict__)
        self.reached = bool(state["reached"])
        self._last = None if state["last"] is None else float(state["last"])
        self._slope = float(state["slope"])
        self.history = [dict(h) for h in state["history"]]

    def __repr__(self) -> str:
        return (f"BudgetController(target={self.target}, metric={self.metric!r}, lam={self.lam:.3g}, "
                f"tolerance={self.tolerance}, reached={self.reached})")
