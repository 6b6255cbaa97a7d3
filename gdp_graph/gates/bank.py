"""The gate parameters of a model (:class:`GateBank`): one ``theta`` per unit of every gated
group and one per gated block, the gate function, and the multiplier of every site.

Gate functions (``GateBank.kind``):

``smoothed_l0`` (the ``gdp`` regularizer)
    ``g = theta^2 / (theta^2 + epsilon)``, in ``[0, 1)``. ``epsilon`` is annealed from large to
    tiny, which polarizes the gates: those whose ``theta`` shrinks faster than
    ``sqrt(epsilon)`` go to 0, the others to 1. ``theta`` starts at
    ``sqrt(epsilon_start * g0 / (1 - g0))`` so that every gate starts at ``g0 = init_gate``.
``clamped`` (the ``polarization`` and ``l1`` regularizers)
    ``g = clamp(theta, 0, 1)``, ``theta`` starts at 1 (the gated model starts equal to the
    original).

The bank numbers its gates in one flat vector (every gated group's units by group id, then the
block gates by id, then a constant 1); that numbering stays inside the bank. Outside it, gates
are named as plans name units: ``{gid: per-unit vector}`` and ``{bid: scalar}``
(:meth:`GateBank.split`, :meth:`GateBank.values`), and a plan becomes a flat mask only here
(:meth:`GateBank.removed_by`, :meth:`GateBank.kept_by`, :meth:`GateBank.mask`).

Units the analysis froze keep a ``theta`` entry (one per unit, so shapes match the group) but
their gate is the constant 1, without gradient. Gates in ``dead`` are exactly 0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from gdp_graph.errors import GdpError
from gdp_graph.graph.inject import SiteSpec, collect_sites

if TYPE_CHECKING:
    from gdp_graph.graph.analysis import Analysis
    from gdp_graph.prune.plan import PruningPlan

__all__ = ["GATE_KINDS", "GateBank", "GateError", "initial_theta"]

GATE_KINDS = ("smoothed_l0", "clamped")


class GateError(GdpError, ValueError):
    """Gates cannot be built or driven as asked (the message names the group, block or node)."""


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
    :class:`GatedModel`), ``dead`` (gates set to exactly 0 for good, see :meth:`kill`). Sites are added with
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
        self.theta_start = theta0  #: where every theta starts (the travel fraction's scale)
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
        self.register_buffer("is_fixed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("fixed_values", torch.ones(self.one_position))
        # smoothed-L0 theta may grow past its start: the gate is saturated there (~1), but theta
        # keeps accumulating the net push of task gradient against price, and the cut at fix_at
        # ranks units by theta; a cap would tie every saturated gate and make that cut arbitrary.
        # Clamped gates (polarization, l1) stay in [0, 1] as published.
        self.theta_max = math.inf if kind == "smoothed_l0" else theta0
        self.sites: list[SiteSpec] = []

    @classmethod
    def for_analysis(cls, analysis: "Analysis", groups: Iterable[int], blocks: Sequence[int] = (), *,
                     kind: str = "smoothed_l0", epsilon: float = 1.0, init_gate: float = 0.99) -> "GateBank":
        """The bank of ``groups`` and ``blocks`` of ``analysis`` (frozen units from the
        analysis), on the traced model's device, with a site at every node their gates multiply."""
        frozen = {gid: analysis.groups[gid].frozen_units.clone() for gid in groups}
        bank = cls(frozen, blocks, kind=kind, epsilon=epsilon, init_gate=init_gate)
        device = next((t.device for t in (*analysis.traced.gm.parameters(), *analysis.traced.gm.buffers())),
                      torch.device("cpu"))
        bank.to(device)
        for site in collect_sites(analysis, sorted(frozen), blocks):
            bank.add_site(site)
        return bank

    # -- structure ------------------------------------------------------------------------------
    def position(self, gid: int, unit_index: Tensor) -> Tensor:
        """Flat indices of a site's positions for group ``gid`` (-1 -> the constant 1)."""
        if gid not in self._offset:
            raise GateError(f"group {gid} has no gates")
        one = torch.full_like(unit_index, self.one_position)
        return torch.where(unit_index >= 0, unit_index + self._offset[gid], one)

    def add_site(self, site: SiteSpec) -> SiteSpec:
        """Register a multiplier (see :class:`~gdp_graph.graph.inject.SiteSpec`): its factors
        are ``("group", gid, unit_index)`` (one unit per position, -1 for none) and
        ``("block", bid, None)``."""
        node, size, mode = site.node, site.size, site.mode
        rows = []
        for kind, ident, unit_index in site.factors:
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

    def theta(self) -> Tensor:
        """Every ``theta`` in the flat order (differentiable; no trailing constant)."""
        # by id, not in ParameterDict order (which sorts keys as strings: '10' before '2')
        parts = [self.group_theta[str(g)] for g in self.group_ids]
        if len(self.block_theta):
            parts.append(torch.stack([self.block_theta[str(b)] for b in self.block_ids]))
        if not parts:
            return self.one.new_zeros(0)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    _theta = theta  #: the older name (gates.hold, gates.init and tests use it)

    def flat(self) -> Tensor:
        """Every gate value (group units by group id, then blocks by id), then a constant 1.
        Once :meth:`fix` ran, the values fixed then (``theta`` stays in the graph with a zero
        factor, so DistributedDataParallel still sees every parameter used)."""
        theta = self.theta()
        if bool(self.is_fixed):
            g = self.fixed_values.to(theta.dtype) + 0.0 * theta
        else:
            g = self._raw(theta)
            g = torch.where(self.frozen | self.dead, self.frozen.to(g.dtype), g)
        return torch.cat([g, self.one.to(g.dtype)])

    @torch.no_grad()
    def low_gates(self) -> int:
        """How many live (not dead, not frozen) gates are below 0.5."""
        values = self.flat()[: self.one_position].detach()
        return int(((values < 0.5) & ~self.dead & ~self.frozen).sum())

    @torch.no_grad()
    def fix(self) -> int:
        """From now on every gate keeps its current value, whatever happens to ``theta``.
        Returns :meth:`low_gates` as they were fixed."""
        low = self.low_gates()
        self.fix_at(self.flat()[: self.one_position].detach().float())
        return low

    @torch.no_grad()
    def fix_at(self, values: Tensor) -> None:
        """Like :meth:`fix`, with the values given (one per gate position; dead gates are 0)."""
        values = torch.where(self.dead, torch.zeros_like(values), values.to(self.fixed_values))
        self.fixed_values.copy_(values)
        self.is_fixed.fill_(True)

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

    def values(self) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Every gate's value now, detached: ``({gid: per-unit vector}, {bid: scalar})``."""
        with torch.no_grad():
            return self.split(self.flat().detach())

    def travel(self) -> Tensor:
        """Flat: how far each ``theta`` still is from 0 as a share of its start,
        ``min(|theta| / theta_start, 1)`` (frozen units 1, dead gates 0), then a constant 1."""
        with torch.no_grad():
            share = (self.theta().detach().abs() / self.theta_start).clamp(0.0, 1.0)
            share = torch.where(self.frozen, torch.ones_like(share), share)
            share = torch.where(self.dead, torch.zeros_like(share), share)
            return torch.cat([share, self.one.to(share.dtype)])

    # -- plans as masks -------------------------------------------------------------------------
    def mask(self, units: Mapping[int, Iterable[int]] = {}, blocks: Iterable[int] = ()) -> Tensor:
        """Flat bool mask (one per gate, no constant) of ``units`` (``{gid: unit indices}`` in
        the group's numbering) and of the gates of ``blocks`` (blocks without a gate are skipped)."""
        out = torch.zeros(self.one_position, dtype=torch.bool)
        for gid, chosen in units.items():
            if gid not in self._offset:
                raise GateError(f"group {gid} has no gates")
            index = torch.as_tensor(list(chosen), dtype=torch.long)
            out[index + self._offset[gid]] = True
        for bid in blocks:
            if bid in self._block_pos:
                out[self._block_pos[bid]] = True
        return out.to(self.dead.device)

    def removed_by(self, plan: "PruningPlan", inner_blocks: Mapping[int, Sequence[int]] = {}) -> Tensor:
        """Flat mask of the gates ``plan`` removes: the units it does not keep, the gates of its
        removed blocks, and every unit of the groups inside them (``inner_blocks``: block id ->
        its inner groups, the policy's ``block_level: inner``)."""
        units = {gid: sorted(set(range(self.size(gid))) - set(keep)) for gid, keep in plan.keep.items()}
        for bid in plan.removed_blocks:
            units.update({gid: range(self.size(gid)) for gid in inner_blocks.get(bid, ())})
        return self.mask(units, plan.removed_blocks)

    def kept_by(self, plan: "PruningPlan", inner_blocks: Mapping[int, Sequence[int]] = {}) -> Tensor:
        """Flat mask of the free units ``plan`` keeps (no block gate, no frozen unit)."""
        units = torch.arange(self.one_position, device=self.dead.device) < self.num_units
        return ~self.removed_by(plan, inner_blocks) & units & ~self.frozen

    def size(self, gid: int) -> int:
        """How many units group ``gid`` has."""
        if gid not in self._offset:
            raise GateError(f"group {gid} has no gates")
        return len(self.group_theta[str(gid)])

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
    def set_epsilon(self, value: float, carry: Optional[Tensor] = None) -> None:
        """Set epsilon; gates sitting at their :meth:`floor` stay there (at gate 0.0099) instead
        of opening as epsilon shrinks below their ``theta^2``. ``carry`` (a flat bool mask, for
        smoothed-L0 gates): those gates keep their value too (``theta`` scaled by
        ``sqrt(new / old)``), so annealing alone opens none of them."""
        if not (math.isfinite(value) and value > 0):
            raise GateError(f"epsilon must be finite and > 0, got {value!r}")
        old_floor = self.floor()
        # which gates sit at the floor is read before carried ones are scaled: a carried gate far
        # above the floor, scaled by a large drop of epsilon, is not one (it would close: issue 17)
        theta = self.theta().detach()
        at_floor = (theta <= old_floor * (1 + 1e-6)) & (theta > 0)
        if carry is not None and self.kind == "smoothed_l0" and bool(carry.any()):
            scale = math.sqrt(value / float(self.epsilon))
            theta = torch.where(carry.to(theta.device), theta * scale, theta)
            self._write_theta(theta)
        self.epsilon.fill_(value)
        if self.kind == "smoothed_l0" and value < old_floor ** 2 * 100 and bool(at_floor.any()):
            self._write_theta(torch.where(at_floor, torch.full_like(theta, self.floor()), theta))

    def keep_floor(self) -> float:
        """The ``theta`` below which a protected gate is not let go: its gate stays >= 0.9."""
        if self.kind == "clamped":
            return 0.9
        return 3.0 * math.sqrt(float(self.epsilon))  # theta^2 / (theta^2 + eps) = 9 / 10

    def hold_floor(self) -> float:
        """The ``theta`` below which a gate held for the budget is not let go: its gate stays
        >= 0.99 (polarized; ``regularizer.hold_budget``)."""
        if self.kind == "clamped":
            return 0.99
        return 9.95 * math.sqrt(float(self.epsilon))  # theta^2 / (theta^2 + eps) = 0.99

    def floor(self) -> float:
        """The smallest ``theta`` of a live gate: ``0.1 * sqrt(epsilon)`` (a gate of 0.0099) for
        smoothed-L0 gates, where the gate still has a gradient and can come back; 0 for clamped
        gates (whose gradient passes at 0)."""
        return 0.0 if self.kind == "clamped" else 0.1 * math.sqrt(float(self.epsilon))

    @torch.no_grad()
    def project(self, protected: Optional[Tensor] = None, held: Optional[Tensor] = None) -> None:
        """Put every ``theta`` back into its domain after an optimizer step:
        ``[floor(), theta_max]`` (``theta_max`` is 1 for clamped gates, unbounded for smoothed-L0
        ones, whose rank at the cut is their ``theta``; the gate function is
        symmetric, so the sign carries nothing, and a step cannot throw a gate across 0), dead
        gates at exactly 0, and ``protected`` positions (a flat bool mask: units a group's limits
        force to stay) at least at :meth:`keep_floor`, ``held`` positions (units held for the
        budget) at least at :meth:`hold_floor`."""
        theta = self.theta().detach().clamp(self.floor(), self.theta_max)
        if protected is not None:
            theta = torch.where(protected.to(theta.device), theta.clamp_min(self.keep_floor()), theta)
        if held is not None:
            theta = torch.where(held.to(theta.device), theta.clamp_min(min(self.hold_floor(), self.theta_max)), theta)
        theta = torch.where(self.dead, torch.zeros_like(theta), theta)
        self._write_theta(theta)

    @torch.no_grad()
    def kill(self, positions: Tensor) -> None:
        """Set the gates at ``positions`` (a flat bool mask) to exactly 0 for good."""
        self.dead |= positions.to(self.dead.device) & ~self.frozen
        self._write_theta(torch.where(self.dead, torch.zeros_like(self.theta()), self.theta()).detach())

    def _write_theta(self, flat: Tensor) -> None:
        for g in self.group_ids:
            p = self.group_theta[str(g)]
            p.copy_(flat[self._offset[g]: self._offset[g] + p.numel()])
        for b in self.block_ids:
            self.block_theta[str(b)].copy_(flat[self._block_pos[b]])

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, groups={len(self.group_ids)} ({self.num_units} units), "
                f"blocks={len(self.block_ids)}, sites={len(self.sites)}")
