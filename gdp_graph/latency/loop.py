"""Closing the loop on a latency target: the table predicts a plan's latency to within a few
hundredths, in both directions (docs/latency.md gives the measured misses). After
the table-driven plan, the pruned model is built and timed against the original (interleaved
rounds, median of the per-round ratios), and the fraction the planner aims at is corrected by what
was measured, for ``latency.corrections`` rounds at most::

    aim 0: the target                       -> plan 0, predicted p0, measured m0
    aim 1: p0 * target / m0                 (one measurement: the ratio correction)
    aim k: secant through the last two (p, m) pairs, solved for m = target
           (the ratio correction again where the slope is not plausible: noise)

The loop stops early when a measurement lands within ``tolerance`` of the target, or when the
corrected aim gives a plan already measured. The plan returned is the measured one closest to
the target; every round (aim, predicted, measured, spread) is in the returned
:class:`LoopResult`, nothing is left on the modules.

    result = close_loop(0.5, plan_at, measure, corrections=2, tolerance=0.02)
    result.plan, result.model, result.measured, [r.to_dict() for r in result.rounds]

``plan_at(aim) -> (plan, predicted)`` is any planner to a latency fraction (the one-shot plans);
``measure(plan) -> (model, Measured)`` builds and times (:func:`latency_measure` on the device,
or a fake one in tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from torch import nn

from gdp_graph.graph.model_copy import deepcopy_model
from gdp_graph.latency.build import _batched, _placed
from gdp_graph.latency.interleaved import Timing, quartiles, round_ratios, time_models
from gdp_graph.latency.timing import default_timer
from gdp_graph.prune.plan import PruningPlan

#: a secant slope (measured over predicted) outside this range is taken for noise
PLAUSIBLE_SLOPE = (0.25, 4.0)
#: aims stay inside this range of latency fractions
AIM_RANGE = (0.01, 1.0)


@dataclass(frozen=True)
class Measured:
    """A measured latency ratio (pruned over original): the median of the per-round ratios and
    their interquartile range."""

    ratio: float
    q1: float
    q3: float
    rounds: int = 0


@dataclass(frozen=True)
class LoopRound:
    """One round: the fraction the planner aimed at, what the table predicts for the plan it
    made, and what was measured."""

    aim: float
    predicted: float
    measured: Measured

    def to_dict(self) -> dict[str, Any]:
        m = self.measured
        return {"aim": round(self.aim, 4), "predicted": round(self.predicted, 4), "measured": round(m.ratio, 4),
                "iqr": [round(m.q1, 4), round(m.q3, 4)], "timing_rounds": m.rounds}


@dataclass(frozen=True)
class LoopResult:
    """The plan chosen (the measured one closest to ``target``), its model, and every round."""

    target: float
    plan: PruningPlan
    model: nn.Module
    rounds: tuple[LoopRound, ...]
    chosen: int

    @property
    def predicted(self) -> float:
        return self.rounds[self.chosen].predicted

    @property
    def measured(self) -> float:
        return self.rounds[self.chosen].measured.ratio

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "chosen": self.chosen, "predicted": round(self.predicted, 4),
                "measured": round(self.measured, 4), "rounds": [r.to_dict() for r in self.rounds]}

    def describe(self) -> list[str]:
        """One line per round, the chosen one marked."""
        return [f"{'*' if i == self.chosen else ' '} round {i}: aim {r.aim:.3f}, predicted {r.predicted:.3f}, "
                f"measured {r.measured.ratio:.3f} [IQR {r.measured.q1:.3f}-{r.measured.q3:.3f}]"
                for i, r in enumerate(self.rounds)]


def next_aim(target: float, rounds: Sequence[LoopRound]) -> float:
    """The predicted fraction to aim at next so that the measurement lands on ``target``: the
    secant through the last two rounds with distinct predictions, else (one round, or a slope
    outside :data:`PLAUSIBLE_SLOPE`) the ratio correction ``predicted * target / measured``."""
    last = rounds[-1]
    aim = last.predicted * target / last.measured.ratio if last.measured.ratio > 0 else last.aim
    earlier = [r for r in rounds[:-1] if abs(r.predicted - last.predicted) > 1e-9]
    if earlier:
        prev = earlier[-1]
        slope = (last.measured.ratio - prev.measured.ratio) / (last.predicted - prev.predicted)
        if PLAUSIBLE_SLOPE[0] <= slope <= PLAUSIBLE_SLOPE[1]:
            aim = last.predicted + (target - last.measured.ratio) / slope
    if not math.isfinite(aim):
        aim = last.aim
    return min(max(aim, AIM_RANGE[0]), AIM_RANGE[1])


def close_loop(target: float, plan_at: Callable[[float], tuple[PruningPlan, float]],
               measure: Callable[[PruningPlan], tuple[nn.Module, Measured]], *, corrections: int = 2,
               tolerance: float = 0.02, on_round: Optional[Callable[[LoopRound], None]] = None) -> LoopResult:
    """Plan to ``target``, measure, and correct the aim up to ``corrections`` times (see the
    module docstring). ``on_round`` is called after every measurement (progress)."""
    if corrections < 0:
        raise ValueError(f"corrections must be >= 0, got {corrections}")
    rounds: list[LoopRound] = []
    plans: list[PruningPlan] = []
    best: Optional[tuple[int, nn.Module]] = None  # only the closest model is kept in memory
    aim = float(target)
    for _ in range(corrections + 1):
        plan, predicted = plan_at(aim)
        if plan in plans:
            break  # the corrected aim gives a plan already measured: nothing new to learn
        model, measured = measure(plan)
        rounds.append(LoopRound(aim, float(predicted), measured))
        plans.append(plan)
        if best is None or abs(measured.ratio - target) < abs(rounds[best[0]].measured.ratio - target):
            best = (len(rounds) - 1, model)
        if on_round:
            on_round(rounds[-1])
        if abs(measured.ratio - target) <= tolerance:
            break
        aim = next_aim(target, rounds)
    assert best is not None
    return LoopResult(float(target), plans[best[0]], best[1], tuple(rounds), best[0])


def measured_ratio(base: Timing, other: Timing) -> Measured:
    """Median and quartiles of the per-round ratios ``other / base`` (nan without a round)."""
    ratios = round_ratios(base, other)
    if not ratios:
        return Measured(math.nan, math.nan, math.nan, 0)
    q1, med, q3 = quartiles(ratios)
    return Measured(med, q1, q3, len(ratios))


def latency_measure(original: nn.Module, build: Callable[[PruningPlan], nn.Module], inputs: Sequence[Any],
                    settings: Any, *, rounds: int = 15, repeat: int = 2,
                    clock: Optional[Callable[[], float]] = None) -> Callable[[PruningPlan], tuple[nn.Module, Measured]]:
    """A ``measure`` for :func:`close_loop` on ``settings``' device, threads, batch, dtype and
    memory format: the plan's model from ``build`` timed against ``original`` in ``rounds``
    interleaved rounds (:func:`gdp_graph.latency.interleaved.time_models`), on the table's clock (the
    thread's CPU time on a CPU at one thread, otherwise the wall clock) unless ``clock`` is given."""
    clock = clock or default_timer(settings.device, settings.threads).clock
    base = _timed_copy(settings, original)
    placed = _placed(settings, nn.Identity(), _batched(list(inputs), settings.batch))[1]

    def measure(plan: PruningPlan) -> tuple[nn.Module, Measured]:
        model = build(plan)
        t = time_models([base, _timed_copy(settings, model)], placed, rounds=rounds, warmup=2, repeat=repeat,
                        threads=settings.threads, clock=clock)
        return model, measured_ratio(t[0], t[1])
    return measure


def cut_measure(analysis: Any, settings: Any, *, rounds: int = 15, repeat: int = 2,
                clock: Optional[Callable[[], float]] = None) -> Callable[[PruningPlan], tuple[nn.Module, Measured]]:
    """The ``measure`` of GDP's closed-loop cut (``GatedModel.cut_measure``): a plan of
    ``analysis`` rewritten as a GraphModule and timed against the unpruned rewrite (like for like:
    both are what ``rewrite`` emits) by :func:`latency_measure` on ``settings``. The unpruned
    rewrite is built at the first measurement, at the cut, not held while the gates train."""
    from gdp_graph.prune.rewrite import rewrite

    def build(plan: PruningPlan) -> nn.Module:
        return rewrite(analysis, plan, check=False, keep_class=False).eval()
    made: list[Callable[[PruningPlan], tuple[nn.Module, Measured]]] = []

    def measure(plan: PruningPlan) -> tuple[nn.Module, Measured]:
        if not made:
            made.append(latency_measure(build(PruningPlan(keep={})), build, analysis.traced.example_inputs,
                                        settings, rounds=rounds, repeat=repeat, clock=clock))
        return made[0](plan)
    return measure


def _timed_copy(settings: Any, model: nn.Module) -> nn.Module:
    """``model`` on the table's device, dtype and memory format (a copy where that changes it,
    so the model returned to the caller stays as built)."""
    same = (settings.device, settings.dtype, settings.memory_format) == ("cpu", "float32", "contiguous")
    return _placed(settings, model if same else deepcopy_model(model), [])[0]
