"""Which channel counts the device likes: a 3x3 convolution timed at every width of a range
shows a staircase on CPUs whose kernels work on blocks of channels (on an AVX-512 CPU every
width from 49 to 64 took as long as 64, and 65 half as long again). Kept widths on the edges of
that staircase cost nothing for the channels they drop (``defaults.round_to``)."""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
from torch import nn


def conv_seconds(width: int, *, device: str = "cpu", size: int = 28, repeat: int = 9,
                 clock: Callable[[], float] = time.thread_time) -> float:
    """Fastest of ``repeat`` forwards of a ``width`` -> ``width`` 3x3 convolution on a
    ``size`` x ``size`` map (CPU time of the thread by default: run it at one thread)."""
    conv = nn.Conv2d(width, width, 3, padding=1).to(device).eval()
    x = torch.randn(1, width, size, size, device=device)
    best = math.inf
    with torch.inference_mode():
        for _ in range(2):
            conv(x)
        for _ in range(repeat):
            start = clock()
            conv(x)
            best = min(best, clock() - start)
    return best


def channel_step(seconds: Sequence[float], widths: Sequence[int], jump: float = 1.15, window: int = 3) -> int:
    """The block size the staircase of ``seconds`` (one per consecutive width) steps by: the gcd
    of the widths ``w`` after which the ``window`` next times all exceed the ``window`` times up
    to ``w`` by more than ``jump`` (a single noisy time makes no edge); 1 when there is none."""
    edges = [widths[i] for i in range(window - 1, len(seconds) - window)
             if min(seconds[i + 1: i + 1 + window]) > jump * max(seconds[i + 1 - window: i + 1])]
    return math.gcd(*edges) if edges else 1


def preferred_round_to(device: str = "cpu", widths: range = range(24, 105)) -> int:
    """The channel multiple this device's convolutions are fastest at (1: no staircase). Takes
    about a second; call it at one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = [conv_seconds(w, device=device) for w in widths]
    finally:
        torch.set_num_threads(previous)
    return channel_step(times, list(widths))
