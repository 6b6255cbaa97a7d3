"""Lambda as a Lagrange multiplier on a budget path (policy key ``lambda_controller.kind:
lagrangian``).

The constrained formulation of structured pruning (Wang et al. 2020; CoFi; Sheared-LLaMA) adds
the constraint "soft cost = target" to the task loss with two multipliers,

    L = task + lambda1 * gap + lambda2 * gap**2,     gap = soft - path(step),

and trains them by gradient *ascent* while the gates descend: ``lambda1 += rate * gap`` and
``lambda2 += rate * gap**2``. The gradient of those two terms with respect to the gates is
``(lambda1 + 2 * lambda2 * gap) * d soft / d gates``, so the price the gates see is

    lambda = lambda1 + 2 * lambda2 * gap

times the ``gdp`` regularizer (the soft cost): :class:`~gdp_graph.gates.model.GatedModel`
multiplies its regularizer by :attr:`LagrangianController.lam` as it does with every
controller, and the Lagrangian needs no other loss term.

What it changes against :class:`~gdp_graph.gates.budget.BudgetController`:

* **It steers the soft cost, not the hard count.** The cut confirms the gates only when the
  cost written from the gates as they are has reached the budget; a controller satisfied by
  the hard count (gates below 0.5) stops pushing while the gates it will cut still carry part
  of their value, and the cut then removes that part in one step.
* **A path, not a step.** ``path`` falls linearly from the soft cost at the first update to the
  target at ``ramp`` updates (:data:`RAMP_SHARE` of the deadline, the share of the window in
  which ``epsilon.max_travel`` lets theta reach 0) and stays there: the gates are asked to
  shed the cost at a pace the window allows, and the multiplier only corrects the deviations
  from that pace. Without a deadline the path is the target from the start.
* **The constraint is an inequality** (soft <= path: a budget is a most, not an exact size), so
  its multiplier stays >= 0 (within ``[lambda_min, lambda_max]``): below the path lambda1
  decays towards ``lambda_min`` and the gates are no longer pushed; it never pays them to open.

``rate`` is ``max(gain, lambda_init / (TRACKING_GAP * deadline))`` with a deadline: a gap of
:data:`TRACKING_GAP` held over the whole window raises lambda1 by ``lambda_init``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from gdp_graph.gates.budget import _SLACK, _finite, _require
from gdp_graph.vocabulary import METRICS

__all__ = ["LagrangianController", "RAMP_SHARE", "TRACKING_GAP"]

#: the path reaches the target at this share of the deadline (epsilon.max_travel's 0.75)
RAMP_SHARE = 0.75
#: a gap this large (a share of the model's cost) held over the window adds lambda_init to lambda1
TRACKING_GAP = 0.01


class LagrangianController:
    """Lambda as the price of the constraint ``soft <= path(step)`` (see the module docstring).

    Parameters
    ----------
    target: fraction of the original ``metric`` to keep, in (0, 1].
    metric: ``"flops"``, ``"params"`` or ``"latency"`` (recorded).
    lambda_init: lambda1 at the start, in [lambda_min, lambda_max].
    tolerance: half width of the band in which the target counts as ``reached``.
    gain: the ascent rate's lower bound, > 0.
    lambda_min, lambda_max: bounds of lambda1 and lambda, 0 <= lambda_min <= lambda_max, lambda_max > 0.
    deadline: the update by which the soft cost should be at the target (None: the path is the
        target from the first update, and the rate is ``gain``).

    Raises ``ValueError`` naming the first invalid argument.
    """

    _CONFIG = ("target", "metric", "tolerance", "gain", "lambda_min", "lambda_max", "deadline")

    def __init__(self, target: float, *, metric: str = "flops", lambda_init: float = 1.0, tolerance: float = 0.02,
                 gain: float = 0.05, lambda_min: float = 0.0, lambda_max: float = 10.0,
                 deadline: Optional[int] = None):
        _require(_finite(target) and 0.0 < target <= 1.0, f"target must be a fraction in (0, 1], got {target!r}")
        _require(metric in METRICS, f"unknown metric {metric!r}: expected one of {', '.join(map(repr, METRICS))}")
        _require(_finite(tolerance) and 0.0 <= tolerance < 1.0, f"tolerance must be in [0, 1), got {tolerance!r}")
        _require(_finite(gain) and gain > 0, f"gain must be a finite number > 0, got {gain!r}")
        _require(_finite(lambda_max) and lambda_max > 0, f"lambda_max must be a finite number > 0, got {lambda_max!r}")
        _require(_finite(lambda_min) and 0.0 <= lambda_min <= lambda_max,
                 f"lambda_min must be within [0, lambda_max] = [0, {lambda_max!r}], got {lambda_min!r}")
        _require(_finite(lambda_init) and lambda_min <= lambda_init <= lambda_max,
                 f"lambda_init must be within [lambda_min, lambda_max] = [{lambda_min!r}, {lambda_max!r}], "
                 f"got {lambda_init!r}")
        _require(deadline is None or (isinstance(deadline, int) and not isinstance(deadline, bool) and deadline >= 1),
                 f"deadline must be None or an int >= 1, got {deadline!r}")
        self.target, self.metric, self.tolerance = float(target), metric, float(tolerance)
        self.gain, self.deadline = float(gain), deadline
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)
        self.rate = self.gain if deadline is None else max(self.gain, lambda_init / (TRACKING_GAP * deadline))
        self.ramp = None if deadline is None else max(1, round(RAMP_SHARE * deadline))
        self.lambda1, self.lambda2 = float(lambda_init), 0.0
        self.lam = float(lambda_init)
        self.reached = False
        self.history: list[dict] = []
        self._start: Optional[tuple[int, float]] = None  # (update, soft cost) where the path starts

    def in_band(self, fraction: float) -> bool:
        """True when ``fraction`` is within ``tolerance`` of the target."""
        return abs(fraction - self.target) <= self.tolerance + _SLACK

    def path(self, step: int) -> float:
        """The soft cost asked for at update ``step``: from the first update's soft cost down to
        the target at ``ramp`` updates after it, then the target."""
        if self._start is None or self.ramp is None:
            return self.target
        first, soft = self._start
        start = max(soft, self.target)
        return start + (self.target - start) * min(max((step - first) / self.ramp, 0.0), 1.0)

    def update(self, step: int, hard_fraction: float, soft_fraction: Optional[float] = None, *,
               lead: Optional[float] = None) -> float:
        """Record this update's fractions, take one ascent step on the multipliers and return the
        new lambda. The gap is the soft fraction's when given (else the hard one's); ``lead`` is
        accepted for the controllers' common signature and not used."""
        _require(isinstance(step, int) and not isinstance(step, bool), f"step must be an int, got {step!r}")
        for name, value in (("hard_fraction", hard_fraction), ("soft_fraction", soft_fraction)):
            _require(value is None or (_finite(value) and value >= 0),
                     f"{name} must be a finite number >= 0, got {value!r}")
        _require(hard_fraction is not None, "hard_fraction must be given")
        hard = float(hard_fraction)
        soft = float(hard if soft_fraction is None else soft_fraction)
        self.reached = self.reached or hard <= self.target + self.tolerance + _SLACK
        if self._start is None:
            self._start = (step, soft)
        aim = self.path(step)
        gap = soft - aim
        self.lambda1 = self._bound(self.lambda1 + self.rate * gap)
        self.lambda2 = min(self.lambda2 + self.rate * gap * gap, self.lambda_max)
        self.lam = self._bound(self.lambda1 + 2.0 * self.lambda2 * gap)
        self.history.append({"step": step, "hard_fraction": hard, "soft_fraction": soft, "path": aim,
                             "lambda": self.lam, "lambda1": self.lambda1, "lambda2": self.lambda2})
        return self.lam

    def _bound(self, value: float) -> float:
        return min(max(value, self.lambda_min), self.lambda_max)

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: settings, multipliers, the path's start, history."""
        state: dict[str, Any] = {k: getattr(self, k) for k in self._CONFIG}
        state.update(kind="lagrangian", rate=self.rate, lambda1=self.lambda1, lambda2=self.lambda2, lam=self.lam,
                     reached=self.reached, start=None if self._start is None else list(self._start),
                     history=[dict(h) for h in self.history])
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        missing = [k for k in (*self._CONFIG, "kind", "rate", "lambda1", "lambda2", "lam", "reached", "start",
                               "history") if k not in state]
        _require(not missing, f"lagrangian controller state lacks {', '.join(missing)}")
        _require(state["kind"] == "lagrangian", f"not a lagrangian controller's state (kind {state['kind']!r})")
        fresh = LagrangianController(state["target"], **{k: state[k] for k in self._CONFIG if k != "target"},
                                     lambda_init=float(state["lambda1"]))
        self.__dict__.update(fresh.__dict__)
        self.rate = float(state["rate"])
        self.lambda1, self.lambda2, self.lam = float(state["lambda1"]), float(state["lambda2"]), float(state["lam"])
        self.reached = bool(state["reached"])
        self._start = None if state["start"] is None else (int(state["start"][0]), float(state["start"][1]))
        self.history = [dict(h) for h in state["history"]]

    def __repr__(self) -> str:
        return (f"LagrangianController(target={self.target}, metric={self.metric!r}, lam={self.lam:.3g}, "
                f"lambda1={self.lambda1:.3g}, lambda2={self.lambda2:.3g}, reached={self.reached})")
