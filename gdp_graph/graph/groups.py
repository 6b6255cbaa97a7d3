"""What the analysis hands to every later stage: channel groups, removable blocks, gate sites.

A *unit* is the smallest set of channels that can be removed without breaking shapes or
exactness (one channel, one GroupNorm group, one attention head, one conv group). A *group* is a
set of units of the same kind, coupled everywhere they appear (a residual stream, the output of
one conv and everything that must follow its channel count). Gates are one value per unit of a
group, shared by every layer the group couples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass(frozen=True)
class Member:
    """One place a group's units appear: a parameter dimension or an op's tensor dimension.

    ``role`` is one of ``"produce"`` (a layer whose output channels are the group: conv/linear
    rows, a parameter), ``"consume"`` (a layer that mixes the group's channels: conv/linear
    columns, matmul contraction, a sum), ``"param"`` (a per-channel parameter or buffer:
    BatchNorm weight, layer scale), ``"pass"`` (an op the channels flow through unchanged).
    """

    node: str  #: fx node name
    target: str  #: module qualified name, or the function/method name
    role: str
    dim: int  #: the tensor or parameter dimension the units lie along
    param: Optional[str] = None  #: parameter name within the module, when the member is one


@dataclass(frozen=True)
class GateSite:
    """Where a group's gates multiply a tensor: the input ``arg`` of a consuming ``node``.

    ``unit_index`` maps each position along ``dim`` to a unit of the group (``-1`` where the
    position belongs to no unit of this group, e.g. the other half of a concatenation).
    """

    node: str
    arg: int
    dim: int
    ndim: int
    unit_index: torch.Tensor


@dataclass
class ChannelGroup:
    """A set of coupled, removable units.

    ``unit_width[u]`` is how many channels of the widest member unit ``u`` spans (1 for plain
    channels, head_dim for heads). ``frozen_units`` are units that may never be removed (they
    reach a model output, an opaque leaf, an unsupported op); ``frozen_reasons`` says why.
    ``inexact_reasons`` lists ops that make removal inexact (LayerNorm over channels, a mean or
    softmax over them): such a group is frozen unless a policy allows inexact pruning.
    """

    id: int
    size: int
    unit: str  #: "channel", "head", "norm-group", "conv-group", or "channel-block"
    unit_width: int
    members: list[Member] = field(default_factory=list)
    couplings: set[str] = field(default_factory=set)
    modules: list[str] = field(default_factory=list)  #: qualified module names, graph order
    module_types: list[str] = field(default_factory=list)  #: their class names
    frozen_units: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    frozen_reasons: list[str] = field(default_factory=list)
    inexact_reasons: list[str] = field(default_factory=list)
    divisor: int = 1  #: the kept unit count must be a multiple of this (conv/norm groups)
    gate_sites: list[GateSite] = field(default_factory=list)
    block: Optional[int] = None  #: id of the removable block the group lives in entirely

    @property
    def prunable(self) -> bool:
        """True when at least one unit may be removed (ignoring inexactness)."""
        return bool((~self.frozen_units).any()) and not self.fully_frozen

    @property
    def fully_frozen(self) -> bool:
        return bool(self.frozen_units.all())

    @property
    def exact(self) -> bool:
        return not self.inexact_reasons

    def describe_frozen(self) -> str:
        """One line saying why (part of) the group cannot be pruned; empty when it can."""
        reasons = list(self.frozen_reasons)
        if self.inexact_reasons:
            reasons += [f"inexact: {r}" for r in self.inexact_reasons]
        return "; ".join(dict.fromkeys(reasons))


@dataclass
class Block:
    """A residual branch that can be removed whole: ``add(shortcut, branch)`` -> ``shortcut + c``.

    A block gate multiplies the branch's inputs; at zero the branch outputs a per-channel
    constant ``c`` (e.g. the bias of its last BatchNorm), which the rewriter keeps.

    ``add_node`` is the add, ``arg`` the operand index of the branch, ``nodes`` the fx nodes
    that belong only to the branch, ``modules`` their qualified module names, ``name`` the
    longest common module prefix (e.g. ``layer1.0``).
    """

    id: int
    name: str
    add_node: str
    arg: int
    nodes: list[str]
    modules: list[str]
    shortcut_is_identity: bool
    frozen_reasons: list[str] = field(default_factory=list)
    #: where the block gate multiplies the branch's inputs (one scalar gate: unit_index is 0)
    gate_sites: list[GateSite] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.frozen_reasons


@dataclass(frozen=True)
class OpaqueLeaf:
    """A submodule that could not be traced and is treated as a black box."""

    module: str
    reason: str
