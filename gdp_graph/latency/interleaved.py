"""Interleaved timing of models side by side on the same inputs: the measurement under every
latency figure (the latency stage's closed loop, ``report``'s comparisons, the benchmarks).

* warm-up passes first (allocator, lazy initialisation, oneDNN primitive caches);
* a fixed number of threads for the whole measurement (restored afterwards);
* interleaved rounds, the order alternating between rounds, so drift on a shared machine slows
  every model alike; each round times ``repeat`` forwards per model.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from gdp_graph.latency.allocator import hold_freed_memory

__all__ = ["Timing", "quartiles", "round_ratios", "time_models"]


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


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0]
        return v, v, v
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _timing(samples: list[float]) -> Timing:
    q1, median, q3 = quartiles(samples)
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
    hold_freed_memory()  # the same speed whatever the process did before (latency.allocator)
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


def round_ratios(base: Timing, other: Timing) -> list[float]:
    """``other / base`` per interleaved round (rounds where ``base`` took no time left out): a slow
    round, another process waking up, slows both models of that round alike."""
    return [o / b for b, o in zip(base.samples, other.samples) if b > 0]
