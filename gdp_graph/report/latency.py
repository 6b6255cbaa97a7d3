"""Latency that can be trusted: models timed side by side on the same inputs.

* warm-up passes first (allocator, lazy initialisation, oneDNN primitive caches);
* a fixed number of threads for the whole measurement (restored afterwards);
* interleaved rounds, the order alternating between rounds, so drift on a shared machine slows
  every model alike;
* each round times ``repeat`` forwards per model, and the comparison is the median of the
  per-round ratios, with their interquartile range as the spread;
* the result is flagged as *not significant* when that spread is wider than the effect
  (the distance of the median ratio from 1).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Timing:
    """Seconds per forward of one model: median over rounds and the interquartile range."""

    median_s: float
    q1_s: float
    q3_s: float
    samples: tuple[float, ...]

    def to_dict(self) -> dict[str, float]:
        return {"median_ms": 1e3 * self.median_s, "q1_ms": 1e3 * self.q1_s, "q3_ms": 1e3 * self.q3_s,
                "rounds": len(self.samples)}


@dataclass(frozen=True)
class LatencyComparison:
    """``candidate`` against ``baseline``; ``ratio`` < 1 means the candidate is faster."""

    baseline: Timing
    candidate: Timing
    ratio: float
    ratio_q1: float
    ratio_q3: float
    threads: int
    repeat: int
    batch: int

    @property
    def significant(self) -> bool:
        """True when the ratio's spread (IQR over rounds) is narrower than its distance from 1."""
        return (self.ratio_q3 - self.ratio_q1) < abs(1.0 - self.ratio) and not (self.ratio_q1 <= 1.0 <= self.ratio_q3)

    def describe(self) -> str:
        verdict = "" if self.significant else " (NOT SIGNIFICANT: the spread exceeds the effect)"
        return (f"latency ratio {self.ratio:.3f} [IQR {self.ratio_q1:.3f}-{self.ratio_q3:.3f}], "
                f"{len(self.baseline.samples)} interleaved rounds x {self.repeat} forwards, "
                f"{self.threads} thread(s), batch {self.batch}{verdict}")

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline.to_dict(), "candidate": self.candidate.to_dict(), "ratio": self.ratio,
                "ratio_q1": self.ratio_q1, "ratio_q3": self.ratio_q3, "significant": self.significant,
                "threads": self.threads, "repeat": self.repeat, "batch": self.batch}


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0]
        return v, v, v
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _timing(samples: list[float]) -> Timing:
    q1, median, q3 = _quartiles(samples)
    return Timing(median, q1, q3, tuple(samples))


def time_models(models: Sequence[nn.Module], inputs: Sequence[Any], *, rounds: int = 15, warmup: int = 3,
                repeat: int = 1, threads: int | None = 1, clock: Callable[[], float] = time.perf_counter
                ) -> list[Timing]:
    """Per-model :class:`Timing` of interleaved rounds (eval mode, inference mode).

    ``threads`` fixes ``torch.set_num_threads`` for the measurement (None keeps the current
    setting); each round runs the models in alternating order, ``repeat`` forwards each.
    ``clock``: the wall clock; ``time.thread_time`` (CPU time, one thread) leaves out the time
    other processes take on a shared machine.
    """
    if rounds < 1 or repeat < 1:
        raise ValueError(f"rounds and repeat must be >= 1, got {rounds} and {repeat}")
    def call(model: nn.Module) -> Any:  # keyword inputs (a dict) for Hugging Face-style models
        return model(**inputs) if isinstance(inputs, Mapping) else model(*inputs)

    states = [m.training for m in models]
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    times: list[list[float]] = [[] for _ in models]
    try:
        for m in models:
            m.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                for m in models:
                    call(m)
            order = list(range(len(models)))
            for r in range(rounds):
                for i in (order if r % 2 == 0 else order[::-1]):
                    start = clock()
                    for _ in range(repeat):
                        call(models[i])
                    times[i].append((clock() - start) / repeat)
    finally:
        torch.set_num_threads(previous_threads)
        for m, s in zip(models, states):
            m.train(s)
    return [_timing(t) for t in times]


def measure_latency(models: Sequence[nn.Module], inputs: Sequence[Any], *, rounds: int = 15,
                    warmup: int = 3, threads: int | None = None) -> list[float]:
    """Median seconds per forward for each model on the same inputs (see :func:`time_models`)."""
    return [t.median_s for t in time_models(models, inputs, rounds=rounds, warmup=warmup, threads=threads)]


def compare_latency(baseline: nn.Module, candidate: nn.Module, inputs: Sequence[Any], *, rounds: int = 21,
                    warmup: int = 5, repeat: int = 3, threads: int = 1) -> LatencyComparison:
    """Time ``candidate`` against ``baseline``; the ratio is taken per round, so a slow round
    (another process woke up) affects both models of that round alike."""
    base, cand = time_models([baseline, candidate], inputs, rounds=rounds, warmup=warmup, repeat=repeat, threads=threads)
    ratios = [c / b for b, c in zip(base.samples, cand.samples) if b > 0]
    q1, median, q3 = _quartiles(ratios)
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    first = next((v for v in values if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return LatencyComparison(base, cand, median, q1, q3, threads, repeat,
                             int(first.shape[0]) if first is not None else 1)
