"""Latency that can be trusted: models timed side by side on the same inputs.

* warm-up passes first (allocator, lazy initialisation, oneDNN primitive caches);
* a fixed number of threads for the whole measurement (restored afterwards);
* interleaved rounds, the order alternating between rounds, so drift on a shared machine slows
  every model alike;
* each round times ``repeat`` forwards per model, and the comparison is the median of the
  per-round ratios, with their interquartile range as the spread;
* the result is flagged as *not significant* when that spread is wider than the effect
  (the distance of the median ratio from 1).

The timing itself is :mod:`gdp_graph.latency.interleaved` (the latency stage measures with it
too); this module compares and reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from gdp_graph.latency.interleaved import Timing, quartiles, round_ratios, time_models

__all__ = ["LatencyComparison", "Timing", "compare_latency", "measure_latency", "time_models"]


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


def measure_latency(models: Sequence[nn.Module], inputs: Sequence[Any], *, rounds: int = 15,
                    warmup: int = 3, threads: int | None = None) -> list[float]:
    """Median seconds per forward for each model on the same inputs (see :func:`time_models`)."""
    return [t.median_s for t in time_models(models, inputs, rounds=rounds, warmup=warmup, threads=threads)]


def compare_latency(baseline: nn.Module, candidate: nn.Module, inputs: Sequence[Any], *, rounds: int = 21,
                    warmup: int = 5, repeat: int = 3, threads: int = 1) -> LatencyComparison:
    """Time ``candidate`` against ``baseline``; the ratio is taken per round, so a slow round
    (another process woke up) affects both models of that round alike."""
    base, cand = time_models([baseline, candidate], inputs, rounds=rounds, warmup=warmup, repeat=repeat,
                             threads=threads)
    q1, median, q3 = quartiles(round_ratios(base, cand))
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    first = next((v for v in values if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return LatencyComparison(base, cand, median, q1, q3, threads, repeat,
                             int(first.shape[0]) if first is not None else 1)
