"""Sparsity regularizers on the gates: what the training loss adds, times lambda.

:func:`make_regularizer` returns ``reg(group_gates, block_gates) -> scalar tensor``, unscaled
(the caller multiplies by lambda, which :class:`gdp_graph.gates.budget.BudgetController` steers).
``group_gates[gid]`` holds one gate per unit of group ``gid`` (shape ``(size,)``; units the
analysis froze come in as a constant 1), ``block_gates[bid]`` one scalar gate per gated block;
groups and blocks without gates are absent.

Regularizers (registered by name in ``REGULARIZERS``):

``gdp``
    The differentiable remaining cost, as a fraction of the original model's ``metric``
    (FLOPs, parameters, or latency where a measured table is attached: the interpolated
    per-layer latency of the expected kept widths, :mod:`gdp_graph.latency`):
    :meth:`CostModel.evaluate_metric` on the gates, divided by the total.
    Each layer's cost is scaled by the mean gate of the channels it consumes times the mean
    gate of the channels it produces (bilinear in neighbouring groups), and by its block's
    gate. All ones gives 1.0; 0/1 gates give the exact cost of the corresponding plan.
    This is the FLOPs-aware penalty of GDP (Guo et al., ICCV 2021); the polarization itself
    comes from the gate function ``theta^2 / (theta^2 + epsilon)`` as epsilon is annealed.
    With ``price="units"`` (policy key ``regularizer.price``) it is instead the paper's plain
    smoothed-L0 count: the mean gate over the free units (the vector ``polarization`` uses), each
    unit priced alike whatever it costs, so the task alone ranks units across layers; lambda is
    still steered by the cost and the cut still meets the budget.

``polarization``
    Zhuang et al. (NeurIPS 2020): ``(t * ||g||_1 - ||g - mean(g)||_1) / n`` over the vector
    ``g`` of all gates of the model (group units and block gates concatenated), each clamped
    to [0, 1], ``mean`` taken over that whole vector, ``n`` its length. Weighting: *uniform,
    one entry per unit* (as the paper does per channel), whatever the unit spans (a channel,
    a head, a norm group) and whatever it costs; a block gate is one entry too. Units the
    analysis froze are left out (they are constant 1, not gates, and would shift the mean).
    ``t`` > 0; the paper uses values around 1 (``DEFAULT_T`` = 1.2).

``l1``
    Network slimming (Liu et al., ICCV 2017) on the gates: ``mean |g|`` over the same vector
    as ``polarization`` (frozen units left out, uniform weights).

``metric`` and ``price`` only affect ``gdp``; ``t`` only ``polarization``.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import Tensor

from gdp_graph.graph.cost import CostModel
from gdp_graph.vocabulary import DEFAULT_T, METRICS, PRICES

__all__ = ["REGULARIZERS", "METRICS", "DEFAULT_T", "Regularizer", "make_regularizer", "free_gate_vector",
           "COST_LR_BOUNDS", "unit_cost_scales"]

#: ``reg(group_gates, block_gates) -> scalar tensor``
Regularizer = Callable[[Mapping[int, Tensor], Mapping[int, Tensor]], Tensor]
_Builder = Callable[[CostModel, str, float, str], Regularizer]


#: name -> builder(cost_model, metric, t, price); filled by :func:`_register`
REGULARIZERS: dict[str, _Builder] = {}


def _register(name: str) -> Callable[[_Builder], _Builder]:
    def add(builder: _Builder) -> _Builder:
        REGULARIZERS[name] = builder
        return builder
    return add


def make_regularizer(name: str, cost_model: CostModel, *, metric: str = "flops", t: float = DEFAULT_T,
                     price: str = "cost") -> Regularizer:
    """The regularizer ``name`` (``gdp``, ``polarization`` or ``l1``) for ``cost_model``'s model.

    Raises ``ValueError`` for an unknown name, metric or price, a ``t`` that is not a finite
    positive number (``polarization`` only), or a model whose ``metric`` totals zero (``gdp``
    priced by cost).

    Example::

        reg = make_regularizer("gdp", CostModel(analyze(model, inputs)))
        loss = task_loss + lam * reg(group_gates, block_gates)
    """
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}: expected one of {', '.join(map(repr, REGULARIZERS))}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(map(repr, METRICS))}")
    if price not in PRICES:
        raise ValueError(f"unknown price {price!r}: expected one of {', '.join(map(repr, PRICES))}")
    return REGULARIZERS[name](cost_model, metric, t, price)


# -- shared helpers -----------------------------------------------------------------------------
def _check_gates(cost_model: CostModel, group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor]) -> None:
    """Every gate tensor names an existing group/block and has one value per unit."""
    groups, blocks = cost_model.analysis.groups, cost_model.analysis.blocks
    for gid, g in group_gates.items():
        if not 0 <= gid < len(groups):
            raise ValueError(f"gates given for group {gid}, but the model has groups 0..{len(groups) - 1}")
        if g.numel() != groups[gid].size:
            raise ValueError(f"group {gid}: {g.numel()} gates for {groups[gid].size} units (shape {tuple(g.shape)})")
    for bid, g in block_gates.items():
        if not 0 <= bid < len(blocks):
            raise ValueError(f"gate given for block {bid}, but the model has blocks 0..{len(blocks) - 1}")
        if g.numel() != 1:
            raise ValueError(f"block {bid}: a block gate is one scalar, got shape {tuple(g.shape)}")


def _placement(group_gates: Mapping[int, Tensor],
               block_gates: Mapping[int, Tensor]) -> tuple[torch.device, torch.dtype]:
    """Device of the gates and the dtype to compute in (at least float32)."""
    tensors = [*group_gates.values(), *block_gates.values()]
    if not tensors:
        return torch.device("cpu"), torch.float32
    dtype = torch.float32
    for g in tensors:
        if g.is_floating_point():
            dtype = torch.promote_types(dtype, g.dtype)
    return tensors[0].device, dtype


def free_gate_vector(cost_model: CostModel, group_gates: Mapping[int, Tensor],
                     block_gates: Mapping[int, Tensor]) -> Tensor:
    """All gates as one vector: each group's non-frozen units (groups by id), then the block
    gates (by id). Frozen units (constant 1) are left out."""
    device, dtype = _placement(group_gates, block_gates)
    parts = []
    for gid in sorted(group_gates):
        free = ~cost_model.analysis.groups[gid].frozen_units.to(device)
        parts.append(group_gates[gid].reshape(-1).to(dtype)[free])
    parts += [block_gates[bid].reshape(1).to(dtype) for bid in sorted(block_gates)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)


# -- the regularizers ---------------------------------------------------------------------------
@_register("gdp")
def _gdp(cost_model: CostModel, metric: str, t: float, price: str) -> Regularizer:
    """Remaining cost fraction written from the gates, or with ``price="units"`` the mean gate
    (see the module docstring)."""
    if price == "units":
        return _unit_count(cost_model)
    total = cost_model.total.metric(metric)
    if not total > 0:
        raise ValueError(f"the model has no {metric} to prune: the gdp regularizer divides by the total {metric}")

    def gdp(group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor]) -> Tensor:
        _check_gates(cost_model, group_gates, block_gates)
        device, dtype = _placement(group_gates, block_gates)
        units = cost_model.gate_vector(group_gates, dtype).to(device)
        return cost_model.evaluate_metric(units, block_gates, metric) / total

    return gdp


def _unit_count(cost_model: CostModel) -> Regularizer:
    """The mean gate over the free units (smoothed-L0 gates are >= 0: the soft count, whose
    gradient is the same for every unit, a closed gate's included)."""

    def unit_count(group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor]) -> Tensor:
        _check_gates(cost_model, group_gates, block_gates)
        g = free_gate_vector(cost_model, group_gates, block_gates)
        return g.mean() if g.numel() else g.sum()

    return unit_count


@_register("polarization")
def _polarization(cost_model: CostModel, metric: str, t: float, price: str) -> Regularizer:
    """``(t*||g||_1 - ||g - mean g||_1) / n`` over all free gates, clamped to [0, 1]."""
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"polarization t must be a finite number > 0, got {t!r}")

    def polarization(group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor]) -> Tensor:
        _check_gates(cost_model, group_gates, block_gates)
        g = free_gate_vector(cost_model, group_gates, block_gates).clamp(0.0, 1.0)
        if g.numel() == 0:
            return g.sum()
        return (t * g.sum() - (g - g.mean()).abs().sum()) / g.numel()

    return polarization


@_register("l1")
def _l1(cost_model: CostModel, metric: str, t: float, price: str) -> Regularizer:
    """``mean |g|`` over all free gates."""

    def l1(group_gates: Mapping[int, Tensor], block_gates: Mapping[int, Tensor]) -> Tensor:
        _check_gates(cost_model, group_gates, block_gates)
        g = free_gate_vector(cost_model, group_gates, block_gates)
        return g.abs().mean() if g.numel() else g.sum()

    return l1


#: the bounds of a gate tensor's learning-rate scale under ``regularizer.lr_by_cost``
COST_LR_BOUNDS = (1.0, 4.0)


def unit_cost_scales(regularizer: Regularizer, group_sizes: Mapping[int, int], frozen: Mapping[int, Tensor],
                     block_ids: list[int]) -> tuple[dict[int, float], dict[int, float]]:
    """Each group's and block's cost per gate relative to the cheapest group's (per free unit),
    within :data:`COST_LR_BOUNDS` (policy key ``regularizer.lr_by_cost``).

    The cost per gate is the regularizer's gradient at every gate 1 (what closing that gate
    saves at first order); a group's is the mean over its free units. Adam moves every ``theta``
    by about its learning rate whatever the gradient's scale, so the cost weighting of the
    penalty only reaches a gate through the sign of its gradient; scaling each gate tensor's
    learning rate by its cost share gives back what plain gradient descent would have done with
    the cost: expensive units move faster, in either direction. The cheapest units keep the
    gates' learning rate, which ``epsilon.max_travel`` sized the window to.
    """
    groups = {g: torch.ones(n, dtype=torch.float64, requires_grad=True) for g, n in group_sizes.items()}
    blocks = {b: torch.ones((), dtype=torch.float64, requires_grad=True) for b in block_ids}
    grads = torch.autograd.grad(regularizer(groups, blocks), [*groups.values(), *blocks.values()],
                                materialize_grads=True)  # a gate the cost does not read: 0
    per_unit = {g: grad.abs()[~frozen[g]].mean() for g, grad in zip(groups, grads)}
    group_cost = {g: float(c) for g, c in per_unit.items() if not c.isnan()}  # nan: no free unit
    block_cost = {b: float(grad.abs()) for b, grad in zip(blocks, grads[len(groups):])}
    cheapest = min((c for c in group_cost.values() if c > 0), default=1.0)
    low, high = COST_LR_BOUNDS

    def bounded(cost: float) -> float:
        return min(max(cost / cheapest, low), high)

    return ({g: bounded(group_cost[g]) if g in group_cost else 1.0 for g in groups},
            {b: bounded(c) for b, c in block_cost.items()})
