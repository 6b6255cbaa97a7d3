"""Building a latency table: the model rewritten at a grid of kept widths (every prunable group
keeps the same fraction of its units, counts rounded to ``round_to``), each rewritten graph run
once with every node timed (:class:`~gdp_graph.latency.timing.NodeTimer`), and the unpruned
model timed whole. A node's points are (its scale in the cost model, its seconds)."""

from __future__ import annotations

import math
import random
import time
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from gdp_graph.errors import GdpError
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import CostModel
from gdp_graph.graph.model_copy import deepcopy_model
from gdp_graph.latency.allocator import hold_freed_memory
from gdp_graph.latency.table import LatencyTable
from gdp_graph.latency.timing import Timer, default_timer, fastest_run, time_nodes
from gdp_graph.policy.schema import LatencySettings
from gdp_graph.prune.plan import PruningPlan


class LatencyError(GdpError, RuntimeError):
    """A latency table cannot be built or used (the message says which setting or node)."""


def grid_fractions(points: int) -> tuple[float, ...]:
    """``points`` kept fractions from 1 down to ``1 / points``."""
    if points < 2:
        raise LatencyError(f"latency.points must be at least 2, got {points}")
    return tuple((points - i) / points for i in range(points))


def _group_keep(g: Any, fraction: float, round_to: int) -> tuple[int, ...]:
    """Group ``g``'s frozen units and then its lowest-numbered free ones, ``fraction`` of its
    size, a multiple of ``round_to`` channels and of its divisor, at least one step."""
    step = math.lcm(max(round_to // math.gcd(round_to, max(g.unit_width, 1)), 1), max(g.divisor, 1))
    count = max(step, int(round(fraction * g.size / step)) * step)
    frozen = [u for u in range(g.size) if bool(g.frozen_units[u])]
    free = [u for u in range(g.size) if not bool(g.frozen_units[u])]
    return tuple(sorted(frozen + free[: max(count - len(frozen), 0)]))


def _fed(analysis: Analysis, keep: dict[int, tuple[int, ...]]) -> PruningPlan:
    """The plan, with one unit given back to every layer it would leave without input."""
    plan = PruningPlan(keep=keep)
    for _ in range(len(analysis.groups) + len(analysis.store.sites)):
        starved = plan.starved_sites(analysis)
        if not starved:
            break
        _, gid, unit = starved[0]
        keep[gid] = tuple(sorted(set(keep[gid]) | {unit}))
        plan = PruningPlan(keep=keep)
    return plan


def grid_plan(analysis: Analysis, fraction: float, round_to: int = 1) -> PruningPlan:
    """Every prunable exact group keeps ``fraction`` of its units (see :func:`_group_keep`); a
    layer left without input gets one unit back; 1 is the model itself."""
    if fraction >= 1.0:
        return PruningPlan(keep={})  # the top of the grid is the model itself, whatever round_to says
    return mixed_plan(analysis, [fraction], round_to)


def mixed_plan(analysis: Analysis, fractions: Sequence[float], round_to: int = 1, seed: int = 0) -> PruningPlan:
    """Every prunable exact group keeps one of ``fractions`` of its units, drawn with ``seed``:
    layers whose input and output widths differ, as in the plans pruning makes (a table built
    on uniform widths alone under-predicted them)."""
    rng = random.Random(seed)
    keep: dict[int, tuple[int, ...]] = {}
    for g in analysis.prunable_groups():
        if g.exact:
            kept = _group_keep(g, fractions[rng.randrange(len(fractions))] if len(fractions) > 1 else fractions[0],
                               round_to)
            if len(kept) < g.size:
                keep[g.id] = kept
    return _fed(analysis, keep)


def plan_scales(cost_model: CostModel, plan: PruningPlan) -> torch.Tensor:
    """Each cost-model term's scale under ``plan`` (0/1 gates, float64)."""
    gates = {}
    for gid, kept in plan.keep.items():
        v = torch.zeros(cost_model.analysis.groups[gid].size, dtype=torch.float64)
        v[list(kept)] = 1.0
        gates[gid] = v
    return cost_model.term_scales(cost_model.gate_vector(gates, torch.float64))[0]


def _batched(inputs: Sequence[Any], batch: int) -> list[Any]:
    """The example inputs with ``batch`` rows (the first row repeated)."""
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] != batch:
            x = x[:1].expand(batch, *x.shape[1:]).contiguous()
        out.append(x)
    return out


def _placed(settings: LatencySettings, model: nn.Module, inputs: Sequence[Any]) -> tuple[nn.Module, list[Any]]:
    """Model and inputs on the table's device, dtype and memory format."""
    device, dtype = torch.device(settings.device), getattr(torch, settings.dtype)
    model = model.to(device=device, dtype=dtype).eval()
    fmt = torch.channels_last if settings.memory_format == "channels_last" else torch.contiguous_format
    if fmt is torch.channels_last:
        model = model.to(memory_format=fmt)
    placed = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
            if x.dim() == 4:
                x = x.contiguous(memory_format=fmt)
        placed.append(x)
    return model, placed


def _variant(analysis: Analysis, plan: PruningPlan) -> nn.Module:
    if not plan.keep:
        return deepcopy_model(analysis.traced.gm)
    from gdp_graph.prune.rewrite import rewrite_graph
    return rewrite_graph(analysis, plan)


#: plans with mixed widths timed besides the uniform grid
MIXED = 2


def _variants(analysis: Analysis, settings: LatencySettings, fractions: Sequence[float], inputs: list[Any]
              ) -> list[tuple[PruningPlan, nn.Module, list[Any]]]:
    """The model rewritten at every grid width and at :data:`MIXED` mixed ones, placed on the
    table's device; the first is the model itself."""
    plans = [(f"{f:.3g} of its widths", grid_plan(analysis, f, settings.round_to)) for f in fractions]
    plans += [(f"mixed widths {i}", mixed_plan(analysis, fractions, settings.round_to, seed=i)) for i in range(MIXED)]
    out = []
    for label, plan in plans:
        try:
            out.append((plan, *_placed(settings, _variant(analysis, plan), inputs)))
        except Exception as exc:  # noqa: BLE001 - re-raised with the width named
            raise LatencyError(f"latency table: the model at {label} cannot be built: "
                               f"{type(exc).__name__}: {exc}") from exc
    return out


def build_table(analysis: Analysis, settings: Optional[LatencySettings] = None, *, key: Optional[dict] = None,
                cost_model: Optional[CostModel] = None, timer: Optional[Timer] = None,
                progress: Optional[Callable[[str, int, int], None]] = None) -> LatencyTable:
    """Measure ``analysis``'s model at ``settings.points`` kept widths (see the module docstring).

    Every pass runs each width once with its nodes timed and once whole, the order alternating
    between passes, so that a machine busy with other work slows every width
    alike; each node keeps its fastest time (:func:`~gdp_graph.latency.timing.fastest_run`), the
    whole model too. ``timer`` defaults to :func:`~gdp_graph.latency.timing.default_timer`;
    ``progress(label, done, total)`` is called after each step. Raises :class:`LatencyError`
    naming the width that failed."""
    settings = settings or LatencySettings()
    hold_freed_memory()  # tables and later measurements in one allocator state (latency.allocator)
    started = time.perf_counter()
    cost_model = cost_model or CostModel(analysis)
    extra = {}
    if timer is None:  # the device's channel staircase, for the round_to hint (cached with the table)
        from gdp_graph.latency.probe import preferred_round_to
        extra["channel_step"] = preferred_round_to(settings.device)
    timer = timer or default_timer(settings.device, settings.threads)
    fractions = grid_fractions(settings.points)
    inputs = _batched(analysis.traced.example_inputs, settings.batch)
    passes = max(int(timer.passes), 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with torch.inference_mode():
            variants = _variants(analysis, settings, fractions, inputs)  # the first: the model itself
            if progress:
                progress("rewritten", 0, passes)
            runs: list[list[dict[str, float]]] = [[] for _ in variants]
            wholes: list[list[float]] = [[] for _ in variants]
            for _, model, placed in variants:  # warm-up
                model(*placed)
            for p in range(passes):
                order = list(range(len(variants)))
                for i in (order if p % 2 == 0 else order[::-1]):
                    runs[i].append(_timed(variants[i], timer, i))
                    wholes[i].append(float(timer.model(variants[i][1], variants[i][2])))
                if progress:
                    progress(f"pass {p + 1}/{passes}", p + 1, passes)
    finally:
        torch.set_num_threads(previous)
    points: dict[str, list[tuple[float, float]]] = {n: [] for n in cost_model.node_names}
    whole_points = []
    for (plan, _, _), per_pass, whole in zip(variants, runs, wholes):
        seconds = fastest_run(per_pass)
        for name, scale in zip(cost_model.node_names, plan_scales(cost_model, plan).tolist()):
            points[name].append((float(scale), float(seconds.get(name, 0.0))))
        whole_points.append((sum(seconds.get(n, 0.0) for n in cost_model.node_names), min(whole)))
    return LatencyTable(key=dict(key or {}), whole_s=whole_points[0][1],
                        points={n: tuple(p) for n, p in points.items()}, fractions=fractions,
                        build_s=time.perf_counter() - started, extra=extra, whole_points=tuple(whole_points))


def _timed(variant: tuple[PruningPlan, nn.Module, list[Any]], timer: Timer, index: int) -> dict[str, float]:
    try:
        return time_nodes(variant[1], variant[2], timer)
    except Exception as exc:  # noqa: BLE001 - re-raised with the variant named
        raise LatencyError(f"latency table: timing variant {index} of the model (0: unpruned, then the narrower grid "
                           f"widths, then the mixed ones) failed: {type(exc).__name__}: {exc}") from exc
