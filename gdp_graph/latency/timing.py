"""How a latency table is timed: a :class:`Timer` (wall clock by default; tests inject a fake
one) and :class:`NodeTimer`, which runs a graph once and times every computing node on the
values that really reach it."""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.fx as fx
from torch import nn

CALLS = ("call_module", "call_function", "call_method")


class Timer(Protocol):
    """One timed call of a node's op on its real inputs (its output and seconds), and seconds per
    forward of a whole model. ``passes``: how many timed runs of a graph a table takes."""

    passes: int

    def node(self, node: fx.Node, call: Callable[[], Any]) -> tuple[Any, float]: ...

    def model(self, module: nn.Module, inputs: Sequence[Any]) -> float: ...


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ClockTimer:
    """``clock`` around each call (on CUDA the device is synchronised around it). A table build
    runs every graph ``passes`` times and keeps each node's fastest time, so a node is timed where
    it runs in the model (weights and inputs as cold or warm as there), not in a hot loop.

    :func:`default_timer` picks the clock: on a CPU at one thread, the thread's CPU time, which
    other processes on a shared machine do not inflate (torch then runs every op on the calling
    thread); otherwise the wall clock."""

    def __init__(self, device: torch.device | str = "cpu", *, passes: int = 7,
                 clock: Callable[[], float] = time.perf_counter):
        self.device = torch.device(device)
        self.passes, self.clock = passes, clock

    def node(self, node: fx.Node, call: Callable[[], Any]) -> tuple[Any, float]:
        _sync(self.device)
        start = self.clock()
        out = call()
        _sync(self.device)
        return out, self.clock() - start

    def model(self, module: nn.Module, inputs: Sequence[Any]) -> float:
        _sync(self.device)
        start = self.clock()
        module(*inputs)
        _sync(self.device)
        return self.clock() - start


class NodeTimer(fx.Interpreter):
    """Runs ``gm`` once with every computing node's op called under ``timer``; the seconds are
    kept in ``seconds`` (by node name)."""

    def __init__(self, gm: fx.GraphModule, timer: Timer):
        super().__init__(gm, garbage_collect_values=True)
        self.timer = timer
        self.seconds: dict[str, float] = {}

    def _callable(self, n: fx.Node) -> Callable[..., Any]:
        if n.op == "call_module":
            return self.fetch_attr(str(n.target))
        if n.op == "call_method":
            return lambda obj, *a, **k: getattr(obj, str(n.target))(*a, **k)
        return n.target  # type: ignore[return-value]

    def run_node(self, n: fx.Node) -> Any:
        if n.op not in CALLS:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        fn = self._callable(n)
        out, seconds = self.timer.node(n, lambda: fn(*args, **kwargs))
        self.seconds[n.name] = float(seconds)
        return out


def default_timer(device: str, threads: int) -> ClockTimer:
    """CPU time of the calling thread on a CPU at one thread, the wall clock otherwise."""
    dev = torch.device(device)
    return ClockTimer(dev, clock=time.thread_time if dev.type == "cpu" and threads == 1 else time.perf_counter)


def time_nodes(gm: fx.GraphModule, inputs: Sequence[Any], timer: Timer) -> dict[str, float]:
    """Seconds of every computing node of ``gm`` in one run on ``inputs``."""
    runner = NodeTimer(gm, timer)
    runner.run(*inputs)
    return runner.seconds


def fastest_run(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each node's fastest time over the runs. Another process can only add time to a node
    (it was descheduled, its cache was evicted), never take any away, so on a shared machine
    the minimum is the node's own cost: medians of long nodes were still inflated 5-10x on a
    2-core machine running ten jobs, where their minima matched a quiet rerun."""
    names = sorted({n for r in runs for n in r})
    return {n: min(r[n] for r in runs if n in r) for n in names}
