"""Latency measured side by side: models timed in interleaved rounds, median per model, so a
noisy shared machine slows all of them alike and the ratios stay meaningful."""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch
from torch import nn


def measure_latency(models: Sequence[nn.Module], inputs: Sequence[Any], *, rounds: int = 15,
                    warmup: int = 3) -> list[float]:
    """Median seconds per forward for each model on the same inputs (eval, no grad)."""
    states = [m.training for m in models]
    for m in models:
        m.eval()
    times: list[list[float]] = [[] for _ in models]
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for m in models:
                    m(*inputs)
            for _ in range(rounds):
                for i, m in enumerate(models):
                    start = time.perf_counter()
                    m(*inputs)
                    times[i].append(time.perf_counter() - start)
    finally:
        for m, s in zip(models, states):
            m.train(s)
    return [statistics.median(t) for t in times]
