"""Stage 1's recording run: the traced graph runs once on the example inputs and each node keeps
its value (``node.meta[VALUE]``), with the arithmetic no rule reads left out where it can be
(:mod:`.shapes_only`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.fx as fx
from torch.utils.flop_counter import FlopCounterMode

from gdp_graph.errors import GdpError
from gdp_graph.graph import shapes_only
from gdp_graph.graph.meta import SHAPE_ONLY, VALUE


class TraceError(GdpError, RuntimeError):
    """The model (or its example inputs) cannot be traced or run."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first}"


class _Recorder(fx.Interpreter):
    """Runs the graph once and leaves every node's value in ``node.meta[VALUE]`` (ShapeProp keeps
    only metadata; rules need the integers that shape arithmetic produced).

    ``count_flops``: also leave each computing node's FLOPs in ``node.meta["flops"]`` (as
    FlopCounterMode counts them), which the gates' cost model needs: counting in this run
    costs attach less than a second forward would, and costs a plain analysis nothing."""

    def __init__(self, gm: fx.GraphModule, count_flops: bool = False):
        super().__init__(gm)
        self.counter = FlopCounterMode(display=False) if count_flops else None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self.counter is None:
            return super().run(*args, **kwargs)
        with self.counter:
            return super().run(*args, **kwargs)

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        # the layer from the table fx built once, not by walking its dotted path per call (a
        # module registered under two names is listed under its first only: those are walked)
        layer = self.submodules.get(target)
        return layer(*args, **kwargs) if layer is not None else super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops() if self.counter is not None else 0
        try:  # fx's run_node less its per-node context manager (a traceback marker, unused here)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = getattr(self, n.op)(n.target, args, kwargs)
        except Exception as exc:
            raise TraceError(f"running node '{n.name}' ({n.format_node()}) on the example inputs failed: "
                             f"{first_line(exc)}") from exc
        n.meta[VALUE] = out
        n.meta.pop(SHAPE_ONLY, None)
        if self.counter is not None and n.op in ("call_module", "call_function", "call_method"):
            n.meta["flops"] = float(self.counter.get_total_flops() - before)
        return out


class _ShapesRecorder(_Recorder):
    """The recording run of :mod:`.shapes_only`: convolutions and linear layers, and the norms
    and activations after them, return the shape of their output only (zeros), and every node
    computed from one is marked shape-only."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shape_only: set[str] = set()
        self.zeros = shapes_only.Zeros()

    def run_node(self, n: fx.Node) -> Any:
        layer = self.submodules.get(n.target) if n.op == "call_module" else None
        fed = bool(self.shape_only) and shapes_only.fed_shapes_only(n, self.shape_only)
        if type(layer) in shapes_only.SKIPPED:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = shapes_only.skipped_output(layer, args, kwargs, self.zeros, fed)
            if out is not None:
                n.meta[VALUE] = out
                shapes_only.mark(n, self.shape_only)
                return out
        if fed and n.op == "call_function" and n.target in shapes_only.SKIPPED_FUNCTIONS:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = shapes_only.skipped_function(n.target, args, kwargs, self.zeros)
            if out is not None:
                n.meta[VALUE] = out
                shapes_only.mark(n, self.shape_only)
                return out
        if fed and not shapes_only.shape_safe(n, layer):
            raise shapes_only.NeedsValues(n.format_node())
        out = super().run_node(n)
        if fed and not shapes_only.reads_a_shape(n):
            shapes_only.mark(n, self.shape_only)
        return out


def record(gm: fx.GraphModule, positional: Sequence[Any], count_flops: bool = False, shapes: bool = False) -> None:
    """Run ``gm`` once, leaving each node's value in ``node.meta[VALUE]``. ``shapes``: first try
    the run without the arithmetic no rule reads (:mod:`.shapes_only`; not while counting FLOPs),
    and where an op may read the numbers left out, or anything fails, run in full."""
    with torch.no_grad():
        if shapes and not count_flops:
            try:
                _ShapesRecorder(gm).run(*positional)
                return
            except Exception:  # noqa: BLE001 - NeedsValues, or a failure the full run reports in its words
                pass
        _Recorder(gm, count_flops).run(*positional)
