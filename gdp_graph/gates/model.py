"""Learnable gates on an analysed model: the bank of gate parameters and the gated graph.

A gate multiplies the *input* of a consuming layer (conv, linear, a matmul's contraction, a sum)
along the dimension that carries a channel group's units; all sites of a group share one gate
vector (one value per unit). A block gate is one scalar on the inputs of a removable branch's
last consuming layers. Gates are never put before depthwise or grouped convolutions: their
channels follow their input group.

Gate functions (``GateBank.kind``):

``smoothed_l0`` (the ``gdp`` regularizer)
    ``g = theta^2 / (theta^2 + epsilon)``, in ``[0, 1)``. ``epsilon`` is annealed from large to
    tiny (:class:`EpsilonSchedule`), which polarizes the gates: those whose ``theta`` shrinks
    faster than ``sqrt(epsilon)`` go to 0, the others to 1. A gate is *exactly* 0 once
    ``theta^2`` underflows or it falls to the hard-count threshold; from then on it is latched
    at 0 (see :meth:`GateBank.latch_zeros`),
    so the optimizer's momentum cannot revive it. ``theta`` starts at
    ``sqrt(epsilon_start * g0 / (1 - g0))`` so that every gate starts at ``g0 = init_gate``
    (0.99 by default): the gated model starts close to the original. A larger ``g0`` makes the
    gates stiffer (the gradient through ``g`` vanishes as ``g -> 1``).
``clamped`` (the ``polarization`` and ``l1`` regularizers)
    ``g = clamp(theta, 0, 1)``, ``theta`` starts at 1 (the gated model starts equal to the
    original); a gate pushed to or below 0 is exactly 0 and latched like above.

Units the analysis froze keep a ``theta`` entry (one per unit, so shapes match the group) but
their gate is the constant 1, without gradient.

:class:`GatedModel` is a copy of the traced graph with ONE call to the bank right after the
inputs, computing every site's multiplier once per forward. At a plain conv (``groups == 1``)
or linear layer the multiplier scales the layer's input columns (``gated_layer``: the same
function as scaling its input, without an extra pass over the activation); at any other site
``gate_multiply(x, scale)`` multiplies the input. Gates are ordinary parameters of the model: any optimizer, autocast and
DistributedDataParallel treat them like the model's own weights. The training-time pieces
(regularizer, lambda controller, epsilon schedule) are driven by :meth:`GatedModel.penalty`,
:meth:`GatedModel.step` and :meth:`GatedModel.end_epoch`.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.gates.budget import BudgetController, hard_fraction, soft_fraction
from gdp_graph.graph.cost import CostModel
from gdp_graph.graph.inject import broadcast_shape
from gdp_graph.policy import Resolution
from gdp_graph.gates.regularizers import DEFAULT_T, make_regularizer
from gdp_graph.errors import GdpError

if TYPE_CHECKING:  # pragma: no cover
    from gdp_graph.gates.finalize import FinalizeReport

__all__ = ["EpsilonSchedule", "GateBank", "GatedModel", "GateError", "SiteGate", "gate_multiply", "gated_layer",
           "polarization_stats"]

SCHEDULE_KINDS = ("exponential", "linear", "cosine")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
GATE_KINDS = ("smoothed_l0", "clamped")


class GateError(GdpError, ValueError):
    """Gates cannot be built or driven as asked (the message names the group, block or node)."""


# --------------------------------------------------------------------------------------------
# epsilon
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpsilonSchedule:
    """The smoothing constant at each step: ``start`` at step 0, ``end`` from ``total_steps`` on.

    ``kind``: ``exponential`` (geometric interpolation, ``start * (end/start)^(step/total)``),
    ``linear`` or ``cosine`` (half a cosine from ``start`` down to ``end``). Steps are whatever
    the caller counts (iterations or epochs).

    >>> EpsilonSchedule(1.0, 1e-4, 100).value(50)  # geometric midpoint
    0.01
    """

    start: float
    end: float
    total_steps: int
    kind: str = "exponential"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end) and self.start > 0 and self.end > 0):
            raise GateError(f"epsilon start and end must be finite and > 0, got {self.start!r} and {self.end!r}")
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise GateError(f"the epsilon schedule needs total_steps >= 1, got {self.total_steps!r}")
        if self.kind not in SCHEDULE_KINDS:
            raise GateError(f"unknown epsilon schedule {self.kind!r}: expected one of {', '.join(SCHEDULE_KINDS)}")

    def value(self, step: int) -> float:
        """Epsilon after ``step`` steps (clamped to the schedule's ends)."""
        p = min(max(step / self.total_steps, 0.0), 1.0)
        if p >= 1.0:
            return float(self.end)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * p
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * p)) / 2.0
        return self.start * (self.end / self.start) ** p

    __call__ = value


# --------------------------------------------------------------------------------------------
# the bank
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteGate:
    """One multiplier in the gated graph: the product of ``factors`` (``("group", gid)`` /
    ``("block", bid)``) over the ``size`` positions of input ``arg`` of ``node`` along ``dim``
    (``size`` is 1 for a block gate alone), viewed as ``shape``.

    ``mode``: ``"input"`` multiplies the input tensor (``shape`` broadcasts against it);
    ``"weight"`` scales the input columns of the layer's weight instead (``shape`` broadcasts
    against the weight), which is the same function at a fraction of the cost: for a conv or
    linear layer ``f``, ``f(x * g) == f_{W * g}(x)``.
    """

    node: str
    arg: int
    dim: int
    size: int
    shape: tuple[int, ...]
    factors: tuple[tuple[str, int], ...]
    mode: str = "input"

    def describe(self) -> str:
        what = " * ".join(f"{k} {i}" for k, i in self.factors)
        return f"input {self.arg} of node '{self.node}' along dim {self.dim} ({what})"


def gate_multiply(x: Tensor, scale: Tensor) -> Tensor:
    """``x * scale`` in ``x``'s dtype (a bf16 activation stays bf16 under autocast)."""
    return x * scale.to(x.dtype)


def gated_layer(layer: nn.Module, x: Tensor, scale: Tensor) -> Tensor:
    """``layer(x * g)`` computed as ``layer`` with its input columns scaled by ``g``: a plain
    ``nn.ConvNd`` (``groups == 1``) or ``nn.Linear``; ``scale`` is shaped like the weight."""
    weight = layer.weight * scale.to(layer.weight.dtype)
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def initial_theta(kind: str, epsilon: float, init_gate: float) -> float:
    """The ``theta`` at which every gate starts (see the module docstring)."""
    if kind == "clamped":
        return 1.0
    if not 0.0 < init_gate < 1.0:
        raise GateError(f"init_gate must be in (0, 1) for smoothed-L0 gates, got {init_gate!r}")
    return math.sqrt(epsilon * init_gate / (1.0 - init_gate))


class GateBank(nn.Module):
    """All gate parameters of a model and the sites they multiply.

    Args:
        groups: ``{gid: frozen mask}`` for every gated group (one bool per unit; frozen units
            are constant 1).
        blocks: ids of the gated blocks.
        kind: ``smoothed_l0`` or ``clamped`` (see the module docstring).
        epsilon: the current smoothing constant (``smoothed_l0``).
        init_gate: the gate value every ``smoothed_l0`` gate starts at.

    Parameters: ``group_theta[str(gid)]`` (shape ``(units,)``), ``block_theta[str(bid)]``
    (a scalar). Buffers: ``epsilon``, ``step`` and ``epoch`` (counters driven by
    :class:`GatedModel`), ``dead`` (gates latched at exactly 0). Sites are added with
    :meth:`add_site`; :meth:`forward` returns one multiplier per site, shaped to broadcast.
    """

    def __init__(self, groups: Mapping[int, Tensor], blocks: Sequence[int] = (), *, kind: str = "smoothed_l0",
                 epsilon: float = 1.0, init_gate: float = 0.99):
        super().__init__()
        if kind not in GATE_KINDS:
            raise GateError(f"unknown gate kind {kind!r}: expected one of {', '.join(GATE_KINDS)}")
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise GateError(f"epsilon must be finite and > 0, got {epsilon!r}")
        self.kind = kind
        self.group_ids: tuple[int, ...] = tuple(sorted(int(g) for g in groups))
        self.block_ids: tuple[int, ...] = tuple(sorted(int(b) for b in blocks))
        theta0 = initial_theta(kind, epsilon, init_gate)
        self.group_theta = nn.ParameterDict(
            {str(g): nn.Parameter(torch.full((len(groups[g]),), theta0)) for g in self.group_ids})
        self.block_theta = nn.ParameterDict({str(b): nn.Parameter(torch.tensor(theta0)) for b in self.block_ids})
        sizes = [len(groups[g]) for g in self.group_ids]
        self._offset = dict(zip(self.group_ids, [sum(sizes[:i]) for i in range(len(sizes))]))
        self.num_units = sum(sizes)
        self._block_pos = {b: self.num_units + i for i, b in enumerate(self.block_ids)}
        self.one_position = self.num_units + len(self.block_ids)  #: flat index of the constant 1
        frozen = [groups[g].to(torch.bool).reshape(-1) for g in self.group_ids]
        frozen.append(torch.zeros(len(self.block_ids), dtype=torch.bool))
        self.register_buffer("frozen", torch.cat(frozen), persistent=False)
        self.register_buffer("one", torch.ones(1), persistent=False)
        self.register_buffer("epsilon", torch.tensor(float(epsilon), dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("dead", torch.zeros(self.one_position, dtype=torch.bool))
        # sign of theta at the last latch: a step that carries theta across 0 lands on 0
        self.register_buffer("sign", torch.ones(self.one_position))
        self.theta_max = theta0  # theta never grows past its start: g -> 1 needs no more
        self.sites: list[SiteGate] = []

    # -- structure ------------------------------------------------------------------------------
    def position(self, gid: int, unit_index: Tensor) -> Tensor:
        """Flat indices of a site's positions for group ``gid`` (-1 -> the constant 1)."""
        if gid not in self._offset:
            raise GateError(f"group {gid} has no gates")
        return torch.where(unit_index >= 0, unit_index + self._offset[gid], torch.full_like(unit_index, self.one_position))

    def add_site(self, node: str, arg: int, dim: int, size: int, shape: Sequence[int],
                 factors: Sequence[tuple[str, int, Optional[Tensor]]], mode: str = "input") -> SiteGate:
        """Register a multiplier (see :class:`SiteGate`): ``factors`` are
        ``("group", gid, unit_index)`` (one unit per position, -1 for none) and
        ``("block", bid, None)``."""
        rows = []
        for kind, ident, unit_index in factors:
            if kind == "group":
                if unit_index is None or unit_index.numel() != size:
                    raise GateError(f"group {ident} at node '{node}': expected {size} unit indices")
                rows.append(self.position(ident, unit_index.reshape(-1).long()))
            elif kind == "block":
                if ident not in self._block_pos:
                    raise GateError(f"block {ident} has no gate")
                rows.append(torch.full((size,), self._block_pos[ident], dtype=torch.long))
            else:
                raise GateError(f"unknown gate factor kind {kind!r} at node '{node}'")
        if not rows:
            raise GateError(f"site at node '{node}' has no gate factor")
        if mode not in ("input", "weight"):
            raise GateError(f"unknown site mode {mode!r} at node '{node}'")
        index = (rows[0] if len(rows) == 1 else torch.stack(rows)).to(self.frozen.device)
        site = SiteGate(node, arg, dim, size, tuple(shape), tuple((k, i) for k, i, _ in factors), mode)
        self.register_buffer(f"site_index_{len(self.sites)}", index, persistent=False)
        self.sites.append(site)
        return site

    # -- values ---------------------------------------------------------------------------------
    def _raw(self, theta: Tensor) -> Tensor:
        theta = theta.float() if theta.dtype in (torch.float16, torch.bfloat16) else theta
        if self.kind == "clamped":
            return theta.clamp(0.0, 1.0)
        sq = theta * theta
        return sq / (sq + self.epsilon.to(sq.dtype).clamp_min(torch.finfo(sq.dtype).tiny))

    def _theta(self) -> Tensor:
        parts = [p for p in self.group_theta.values()]
        if len(self.block_theta):
            parts.append(torch.stack(list(self.block_theta.values())))
        if not parts:
            return self.one.new_zeros(0)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def flat(self) -> Tensor:
        """Every gate value (group units by group id, then blocks by id), then a constant 1."""
        g = self._raw(self._theta())
        g = torch.where(self.frozen | self.dead, self.frozen.to(g.dtype), g)
        return torch.cat([g, self.one.to(g.dtype)])

    def forward(self) -> tuple[Tensor, ...]:
        """One multiplier per site, in :attr:`sites` order, shaped to broadcast against the
        site's input."""
        flat = self.flat()
        out = []
        for i, site in enumerate(self.sites):
            index = getattr(self, f"site_index_{i}")
            scale = flat[index] if index.dim() == 1 else flat[index].prod(0)
            out.append(scale.view(site.shape))
        return tuple(out)

    def split(self, flat: Tensor) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """``flat`` (from :meth:`flat`) as per-group vectors and per-block scalars."""
        groups = {g: flat[self._offset[g]: self._offset[g] + len(self.group_theta[str(g)])] for g in self.group_ids}
        blocks = {b: flat[self._block_pos[b]] for b in self.block_ids}
        return groups, blocks

    def group_gates(self) -> dict[int, Tensor]:
        """``{gid: gate vector}`` (differentiable; frozen units are 1)."""
        return self.split(self.flat())[0]

    def block_gates(self) -> dict[int, Tensor]:
        """``{bid: scalar gate}`` (differentiable)."""
        return self.split(self.flat())[1]

    def site_values(self) -> dict[tuple[str, int, int], Tensor]:
        """``{(node, arg, dim): multiplier over the site's positions}``, detached (what a
        finalized model must reproduce)."""
        with torch.no_grad():
            scales = self.forward()
        return {(s.node, s.arg, s.dim): v.detach().reshape(-1).clone() for s, v in zip(self.sites, scales)}

    # -- schedule hooks -------------------------------------------------------------------------
    @torch.no_grad()
    def set_epsilon(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise GateError(f"epsilon must be finite and > 0, got {value!r}")
        self.epsilon.fill_(value)

    @torch.no_grad()
    def latch_zeros(self, threshold: float = 0.0) -> int:
        """Latch every gate at or below ``threshold`` now (the policy's hard-count threshold:
        exactly what finalize removes), and every gate whose last step carried ``theta`` across
        0 (a proximal step would have stopped at 0), at exactly 0 for good, so neither momentum
        nor the steep smoothed-L0 slope near 0 at small epsilon can revive it; returns how
        many gates are latched in total."""
        with torch.no_grad():
            # beyond theta0 a gate is saturated (g -> 1 as epsilon anneals); letting the task
            # gradient push it further only lengthens the way back to 0
            for p in list(self.group_theta.values()) + list(self.block_theta.values()):
                p.clamp_(max=self.theta_max)
        theta = self._theta().detach()
        raw = self._raw(theta)
        crossed = torch.sign(theta) * self.sign < 0  # the step jumped over 0: a proximal step stops at 0
        self.dead |= ((raw <= threshold) | crossed) & ~self.frozen
        self.sign.copy_(torch.where(theta == 0, self.sign, torch.sign(theta)))
        return int(self.dead.sum())

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, groups={len(self.group_ids)} ({self.num_units} units), "
                f"blocks={len(self.block_ids)}, sites={len(self.sites)}")


# --------------------------------------------------------------------------------------------
# the gated graph
# --------------------------------------------------------------------------------------------


def _unique_attr(gm: nn.Module, base: str) -> str:
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    return name


def _weight_shape(gm: fx.GraphModule, node: fx.Node, arg: int, dim: int, ndim: int) -> Optional[tuple[int, ...]]:
    """The weight-shaped view of a site's scale when the site's layer can take the gate on its
    weight (a plain conv with ``groups == 1`` or a linear layer, called with the input alone),
    else None."""
    if node.op != "call_module" or arg != 0 or len(node.args) != 1 or node.kwargs:
        return None
    layer = gm.get_submodule(str(node.target))
    if layer._forward_pre_hooks or layer._forward_hooks:  # e.g. weight_norm computes the weight in a hook
        return None
    if type(layer) in _CONVS and layer.groups == 1 and dim % ndim == 1:
        return (1, -1) + (1,) * (layer.weight.dim() - 2)
    if type(layer) is nn.Linear and dim % ndim == ndim - 1:
        return (1, -1)
    return None


def _add_sites(bank: GateBank, analysis: Analysis, groups: Sequence[int], blocks: Sequence[int]) -> None:
    """One bank site per (node, arg, dim) touched by a gated group; block gates join a site of
    the same (node, arg) when there is one."""
    keyed: dict[tuple[str, int, int], list] = {}
    shape: dict[tuple[str, int, int], tuple[int, int]] = {}
    for gid in groups:
        for s in analysis.groups[gid].gate_sites:
            key = (s.node, s.arg, s.dim)
            keyed.setdefault(key, []).append(("group", gid, s.unit_index))
            shape[key] = (s.ndim, s.unit_index.numel())
    for bid in blocks:
        for s in analysis.blocks[bid].gate_sites:
            key = next((k for k in keyed if k[:2] == (s.node, s.arg)), (s.node, s.arg, s.dim))
            keyed.setdefault(key, []).append(("block", bid, None))
            shape.setdefault(key, (s.ndim, 1))
    gm = analysis.traced.gm
    nodes = {n.name: n for n in gm.graph.nodes}
    for (name, arg, dim), factors in keyed.items():
        ndim, size = shape[(name, arg, dim)]
        if name not in nodes:
            raise GateError(f"gate site at node '{name}': no such node in the traced graph")
        weight_view = _weight_shape(gm, nodes[name], arg, dim, ndim)
        if weight_view is not None:
            bank.add_site(name, arg, dim, size, weight_view, factors, mode="weight")
        else:
            bank.add_site(name, arg, dim, size, broadcast_shape(dim, ndim, size), factors)


def gated_graph(analysis: Analysis, bank: GateBank, name: str = "gdp_gates") -> fx.GraphModule:
    """A copy of the traced graph that calls ``bank`` once after its inputs and applies every
    bank site: ``gate_multiply(input, scale)`` or, in weight mode, ``gated_layer(layer, input,
    scale)`` in place of the layer call."""
    gm = copy.deepcopy(analysis.traced.gm)
    attr = _unique_attr(gm, name)
    gm.add_submodule(attr, bank)
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    anchor = placeholders[-1] if placeholders else next(iter(graph.nodes))
    with graph.inserting_after(anchor):
        bank_node = graph.call_module(attr, ())
    for i, site in enumerate(bank.sites):
        node = nodes[site.node]
        if site.arg >= len(node.args) or not isinstance(node.args[site.arg], fx.Node):
            raise GateError(f"gate site {site.describe()}: the input is not a positional tensor argument "
                            f"({node.format_node()})")
        with graph.inserting_before(node):
            scale = graph.call_function(operator.getitem, (bank_node, i))
            if site.mode == "weight":
                layer = graph.get_attr(str(node.target))
                replacement = graph.call_function(gated_layer, (layer, node.args[0], scale))
                replacement.meta = dict(node.meta)
                node.replace_all_uses_with(replacement)
                graph.erase_node(node)
                continue
            gated = graph.call_function(gate_multiply, (node.args[site.arg], scale))
        args = list(node.args)
        args[site.arg] = gated
        node.args = tuple(args)
    graph.lint()
    gm.recompile()
    return gm


def polarization_stats(values: Tensor) -> dict[str, float]:
    """Fractions of ``values`` that are ``== 0``, in ``(0, 0.01)``, ``[0.01, 0.99)``, ``>= 0.99``."""
    v = values.detach().double().reshape(-1)
    n = max(v.numel(), 1)
    return {"zero": float((v == 0).sum()) / n,
            "near_zero": float(((v > 0) & (v < 0.01)).sum()) / n,
            "middle": float(((v >= 0.01) & (v < 0.99)).sum()) / n,
            "near_one": float((v >= 0.99).sum()) / n}


class GatedModel(nn.Module):
    """The user's model (a traced copy) with learnable gates, trained in the user's own loop.

    Built from an :class:`Analysis` and a policy :class:`Resolution` (which groups and blocks
    get gates, and the regularizer / target / schedules of its policy)::

        gated = GatedModel(analysis, resolution, total_steps=epochs * len(loader))
        loss = task_loss(gated(x), y) + gated.penalty()
        loss.backward(); optimizer.step(); gated.step()
        pruned = gated.finalize()

    Args:
        total_steps: training iterations the epsilon schedule spans (needed by ``gdp`` with an
            iteration schedule); with an epoch schedule, ``total_steps // steps_per_epoch``
            epochs.
        steps_per_epoch: lets :meth:`step` notice epoch ends (else call :meth:`end_epoch`).
        init_gate: the value every smoothed-L0 gate starts at.

    ``state_dict()`` holds the model's weights, every ``theta``, epsilon, the step/epoch
    counters, the latched zeros and (as extra state) lambda and the controller: loading it into
    a fresh model built the same way resumes exactly.
    """

    def __init__(self, analysis: Analysis, resolution: Resolution, *, total_steps: Optional[int] = None,
                 steps_per_epoch: Optional[int] = None, init_gate: float = 0.99):
        super().__init__()
        policy = resolution.policy
        reg = policy.regularizer
        self.analysis = analysis
        self.resolution = resolution
        self.policy = policy
        self.metric = policy.target.metric
        self.threshold = float(reg.threshold)
        self.steps_per_epoch = _positive_or_none(steps_per_epoch, "steps_per_epoch")
        total_steps = _positive_or_none(total_steps, "total_steps")
        kind = "smoothed_l0" if reg.name == "gdp" else "clamped"
        self.epsilon_schedule: Optional[EpsilonSchedule] = None
        self.epsilon_per = "iteration"
        self._schedule_problem: Optional[str] = None
        if kind == "smoothed_l0":
            self._init_epsilon_schedule(total_steps)
        groups = {gid: analysis.groups[gid].frozen_units.clone() for gid in resolution.gated_groups()}
        blocks = resolution.gated_blocks()
        cfg = reg.epsilon if kind == "smoothed_l0" else None
        eps0 = cfg.start if cfg is not None else 1.0
        bank = GateBank(groups, blocks, kind=kind, epsilon=eps0, init_gate=init_gate)
        bank.to(_device_of(analysis.traced.gm))
        _add_sites(bank, analysis, sorted(groups), blocks)
        self.module = gated_graph(analysis, bank)
        self._bank_name = next(n for n, m in self.module.named_children() if m is bank)
        self.cost_model = CostModel(analysis)
        self.regularizer = make_regularizer(reg.name, self.cost_model, metric=self.metric,
                                            t=reg.t if reg.t is not None else DEFAULT_T)
        ctrl = reg.lambda_controller
        self.controller: Optional[BudgetController] = None
        self.controller_per = ctrl.step
        self._lambda = float(reg.lambda_)
        if ctrl.kind == "proportional":
            self.controller = BudgetController(policy.target.fraction, metric=self.metric, lambda_init=reg.lambda_,
                                               tolerance=policy.target.tolerance, gain=ctrl.gain,
                                               lambda_min=ctrl.min, lambda_max=ctrl.max)
        self._finalize_report: Optional["FinalizeReport"] = None
        self.train()

    def _init_epsilon_schedule(self, total_steps: Optional[int]) -> None:
        """The epsilon schedule of the policy over the training length; without a length the
        gates still work (at epsilon start) and :meth:`step` says what is missing."""
        cfg = self.policy.regularizer.epsilon
        if cfg is None:
            raise GateError("the gdp regularizer needs an epsilon schedule (regularizer.epsilon)")
        self.epsilon_per = cfg.step
        length = total_steps
        if cfg.step == "epoch":
            length = None if total_steps is None or self.steps_per_epoch is None \
                else max(1, total_steps // self.steps_per_epoch)
            self._schedule_problem = ("regularizer.epsilon.step is 'epoch': pass total_steps= and steps_per_epoch= "
                                      "to attach() so that the schedule knows how many epochs training lasts")
        else:
            self._schedule_problem = (f"the gdp regularizer anneals epsilon from {cfg.start:g} to {cfg.end:g} over "
                                      "training: pass total_steps= (training iterations) to attach() so that the "
                                      "schedule knows its length")
        if length is not None:
            self.epsilon_schedule = EpsilonSchedule(cfg.start, cfg.end, length, cfg.schedule)
            self._schedule_problem = None

    # -- the model ------------------------------------------------------------------------------
    @property
    def bank(self) -> GateBank:
        """The gate parameters (a submodule of :attr:`module`)."""
        return getattr(self.module, self._bank_name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def group_gates(self) -> dict[int, Tensor]:
        """``{gid: gate vector}`` of every gated group (differentiable)."""
        return self.bank.group_gates()

    def block_gates(self) -> dict[int, Tensor]:
        """``{bid: scalar gate}`` of every gated block (differentiable)."""
        return self.bank.block_gates()

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gates' ``theta`` (e.g. for an optimizer group without weight decay)."""
        return list(self.bank.parameters())

    # -- training -------------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        """The current regularization strength."""
        return self.controller.lam if self.controller is not None else self._lambda

    @property
    def epsilon(self) -> float:
        return float(self.bank.epsilon)

    def gate_param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups for the gates, one per gate vector, with the learning
        rate divided by the share of the target metric one of its units costs.

        With plain SGD (no momentum, no weight decay, as here) a gate then moves by
        ``lr * (lambda + dL/dg / c) * dg/dtheta``: a unit is removed when its task gradient per
        unit of cost is below the price ``lambda`` that the budget controller sets, whatever
        the unit's size (a channel, a head, a whole block)."""
        metric_index = 0 if self.metric == "flops" else 1
        total = self.cost_model.total.metric(self.metric) or 1.0
        if self.bank.kind != "smoothed_l0":
            # clamped gates move one for one with theta; the smoothed L0 starts with
            # dg/dtheta = 2*theta*eps/(theta^2+eps)^2 ~ 0.02 (g0 = 0.99, theta0 = 1): the same
            # lr must not move clamped gates 50x faster
            lr *= 0.02
        unit = self.cost_model.unit_costs()
        base = self.cost_model.gate_vector({}, torch.float64)
        full = float(self.cost_model.evaluate(base)[metric_index])
        groups = []

        def group(param: nn.Parameter, share: float) -> dict[str, Any]:
            scale = 1.0 / share if share > 0 else 1.0
            return {"params": [param], "lr": lr * scale, "momentum": 0.0, "weight_decay": 0.0,
                    "nesterov": False, "dampening": 0.0}

        for key, param in self.bank.group_theta.items():
            groups.append(group(param, unit[int(key)].metric(self.metric) / total))
        for key, param in self.bank.block_theta.items():
            zero = {int(key): torch.zeros((), dtype=torch.float64)}
            groups.append(group(param, (full - float(self.cost_model.evaluate(base, zero)[metric_index])) / total))
        return groups

    def penalty(self) -> Tensor:
        """``lambda * regularizer(gates)``: add it to the task loss (outside autocast is fine)."""
        groups, blocks = self.bank.split(self.bank.flat())
        return self.lam * self.regularizer(groups, blocks)

    def fractions(self) -> tuple[float, float]:
        """(hard, soft) remaining fraction of the target metric: gates ``<= threshold`` removed,
        and the cost written from the gates as they are."""
        with torch.no_grad():
            groups, blocks = self.bank.split(self.bank.flat())
        hard = hard_fraction(self.cost_model, groups, blocks, threshold=self.threshold, metric=self.metric)
        return hard, soft_fraction(self.cost_model, groups, blocks, metric=self.metric)

    def step(self, global_step: Optional[int] = None) -> None:
        """Call after every optimizer step: counts the iteration (or sets it to ``global_step``),
        latches gates that reached exactly 0, anneals epsilon and updates the lambda controller
        where they move per iteration, and runs :meth:`end_epoch` at epoch ends when
        ``steps_per_epoch`` is known."""
        bank = self.bank
        with torch.no_grad():
            bank.step.fill_(int(global_step) if global_step is not None else int(bank.step) + 1)
        count = int(bank.step)
        bank.latch_zeros(self.threshold)
        self._advance("iteration", count)
        if self.steps_per_epoch is not None and count % self.steps_per_epoch == 0:
            self.end_epoch()

    def end_epoch(self) -> None:
        """Call at the end of every epoch (done by :meth:`step` when ``steps_per_epoch`` is
        known): moves the schedules that step per epoch."""
        bank = self.bank
        with torch.no_grad():
            bank.epoch.add_(1)
        bank.latch_zeros(self.threshold)
        self._advance("epoch", int(bank.epoch))

    def _advance(self, unit: str, count: int) -> None:
        if self.bank.kind == "smoothed_l0" and self.epsilon_per == unit:
            if self.epsilon_schedule is None:
                raise GateError(self._schedule_problem or "no epsilon schedule")
            self.bank.set_epsilon(self.epsilon_schedule.value(count))
        if self.controller is not None and self.controller_per == unit:
            hard, soft = self.fractions()
            self.controller.update(count, hard, soft)

    # -- reporting and finalizing ---------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Polarization and budget state, flat: gate fractions ``zero`` / ``near_zero`` (0, 0.01)
        / ``middle`` [0.01, 0.99) / ``near_one`` over free unit gates (and ``block_*`` over block
        gates), ``hard_fraction``, ``soft_fraction``, ``target``, ``metric``, ``lambda``,
        ``epsilon``, ``step``, ``epoch``, ``latched``."""
        bank = self.bank
        with torch.no_grad():
            flat = bank.flat()
        free = ~bank.frozen
        units = flat[: bank.num_units][free[: bank.num_units]]
        blocks = flat[bank.num_units: bank.one_position]
        hard, soft = self.fractions()
        out: dict[str, Any] = {"gated_groups": len(bank.group_ids), "gated_units": int(units.numel()),
                               "gated_blocks": len(bank.block_ids)}
        out.update(polarization_stats(units))
        if blocks.numel():
            out.update({f"block_{k}": v for k, v in polarization_stats(blocks).items()})
        out.update(hard_fraction=hard, soft_fraction=soft, target=self.policy.target.fraction, metric=self.metric,
                   threshold=self.threshold, regularizer=self.policy.regularizer.name)
        out["lambda"] = self.lam
        out.update(epsilon=self.epsilon if self.bank.kind == "smoothed_l0" else None, step=int(bank.step),
                   epoch=int(bank.epoch), latched=int(bank.dead.sum()))
        return out

    def finalize(self, *, threshold: Optional[float] = None, tolerance: float = 1e-4,
                 inputs: Optional[Sequence[Any]] = None) -> fx.GraphModule:
        """The exact smaller model (see :func:`gdp_graph.gates.finalize.finalize`); its report is
        kept for :meth:`finalize_report`. The gated model is not changed."""
        from gdp_graph.gates.finalize import finalize

        pruned, report = finalize(self, threshold=threshold, tolerance=tolerance, inputs=inputs)
        self._finalize_report = report
        return pruned

    def finalize_report(self) -> dict[str, Any]:
        """The last :meth:`finalize`'s report as a dict (empty before)."""
        return self._finalize_report.to_dict() if self._finalize_report is not None else {}

    # -- checkpointing --------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"lambda": self._lambda,
                "controller": self.controller.state_dict() if self.controller is not None else None}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or "lambda" not in state:
            raise GateError("GatedModel state: extra state lacks 'lambda'")
        self._lambda = float(state["lambda"])
        ctrl = state.get("controller")
        if (ctrl is None) != (self.controller is None):
            raise GateError("GatedModel state: the checkpoint's lambda controller does not match this policy's "
                            f"(checkpoint {'has none' if ctrl is None else 'has one'})")
        if ctrl is not None:
            self.controller.load_state_dict(ctrl)


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _positive_or_none(value: Optional[int], name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GateError(f"{name} must be a positive int, got {value!r}")
    return value
