"""Turn a trained :class:`~gdp_graph.gates.model.GatedModel` into the exact smaller model.

Three steps, each usable on its own:

1. :func:`plan_from_gates`: units whose gate is ``<= threshold`` are removed, within the
   policy's limits (``min_channels``, ``round_to``, ``max_fraction``, frozen units, the group's
   divisor); gated blocks whose gate is ``<= threshold`` are removed.
2. :func:`absorb`: every gate is folded into the layer that consumes it (the input columns of a
   conv, transposed conv or linear weight, or a parameter operand of ``F.linear``/matmul);
   where no weight can take it (a shared layer, an activation operand) it is returned as a
   site scale that :func:`~gdp_graph.prune.rewrite.rewrite` keeps in the pruned graph.
3. :func:`finalize`: plan + absorb + rewrite, then the pruned model is compared with the gated
   model in eval mode on the example inputs. Units kept although their gate is ~0 (the limits
   forced it) are absorbed with that gate, so the outputs still match; removed units whose
   gate was tiny but not 0 are the only source of difference (below ``threshold`` times the
   activation).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import Cost, count_params, model_cost, traced_cost
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.policy import Resolution
from gdp_graph.prune.rewrite import SiteScales, rewrite
from gdp_graph.prune.verify import VerifyResult, compare_outputs
from gdp_graph.errors import GdpError
from gdp_graph.gates import selection
from gdp_graph.gates.bank import GateBank
from gdp_graph.gates.model import GatedModel

__all__ = ["FinalizeError", "FinalizeReport", "absorb", "absorb_scales", "finalize", "plan_from_gates"]


class FinalizeError(GdpError, RuntimeError):
    """The finalized model does not reproduce the gated model (the message says by how much)."""


# --------------------------------------------------------------------------------------------
# 1. the plan
# --------------------------------------------------------------------------------------------


def plan_from_gates(analysis: Analysis, bank: GateBank, resolution: Resolution, threshold: float) -> PruningPlan:
    """The plan that removes what ``bank``'s gates switched off (see
    :func:`gdp_graph.gates.selection.plan_from_gates`)."""
    with torch.no_grad():
        groups, blocks = bank.split(bank.flat())
    return selection.plan_from_gates(analysis, groups, blocks, resolution, threshold)


# --------------------------------------------------------------------------------------------
# 2. absorbing the gates into weights
# --------------------------------------------------------------------------------------------

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_MATMULS = (torch.matmul, operator.matmul)


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class _Usage:
    """Which weights may be scaled in place: used by exactly one node and not shared."""

    def __init__(self, gm: fx.GraphModule, weights: nn.Module):
        self.calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op in ("call_module", "get_attr"):
                self.calls[str(n.target)] = self.calls.get(str(n.target), 0) + 1
        self.names: dict[int, int] = {}
        for _, t in list(weights.named_parameters(remove_duplicate=False)) + list(weights.named_buffers(remove_duplicate=False)):
            self.names[id(t)] = self.names.get(id(t), 0) + 1

    def owned(self, target: str, tensor: Tensor) -> bool:
        return self.calls.get(target, 0) == 1 and self.names.get(id(tensor), 0) <= 1


def _absorb_site(node: fx.Node, arg: int, dim: int, ndim: int, scale: Tensor, weights: nn.Module, usage: _Usage) -> bool:
    """Fold ``scale`` (over the positions of input ``arg`` along ``dim``) into a weight of
    ``node``; False when no weight can take it."""
    last = dim % ndim == ndim - 1
    if node.op == "call_module":
        m = weights.get_submodule(str(node.target))
        w = getattr(m, "weight", None)
        if arg != 0 or not isinstance(w, Tensor) or not usage.owned(str(node.target), w):
            return False
        if type(m) in _CONVS and m.groups == 1 and dim % ndim == 1:
            shape = [1, -1] + [1] * (w.dim() - 2)
        elif type(m) in _TRANSPOSED and m.groups == 1 and dim % ndim == 1:
            shape = [-1] + [1] * (w.dim() - 1)
        elif type(m) is nn.Linear and last:
            shape = [1, -1]
        else:
            return False
        with torch.no_grad():
            w.mul_(scale.to(w).reshape(shape))
        return True
    if node.op == "call_function" and arg == 0 and last:
        other = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight", node.kwargs.get("other"))
        if not isinstance(other, fx.Node) or other.op != "get_attr":
            return False
        w = _attr(weights, str(other.target))
        if not isinstance(w, Tensor) or not w.is_floating_point() or not usage.owned(str(other.target), w):
            return False
        if node.target is F.linear and w.dim() == 2:
            shape = [1, -1]
        elif node.target in _MATMULS and w.dim() >= 2:
            shape = [-1, 1]
        else:
            return False
        with torch.no_grad():
            w.mul_(scale.to(w).reshape(shape))
        return True
    return False


def absorb_scales(analysis: Analysis, weights: nn.Module, scales: Mapping[tuple[str, int, int], Tensor],
                  skip_nodes: frozenset[str] = frozenset()) -> SiteScales:
    """Fold ``scales`` (``{(node, arg, dim): multiplier over the positions}``) into ``weights``
    in place (a module with the traced graph's structure); returns those no weight could take,
    as ``site_scales`` for :func:`~gdp_graph.prune.rewrite.rewrite`. Sites at ``skip_nodes`` (e.g.
    inside removed blocks) are ignored; all-ones scales are nothing to do.

    Raises:
        ValueError: two scales on the same node input along different dims that no weight
            could take (``rewrite`` keeps one scale per input).
    """
    gm = analysis.traced.gm
    nodes = {n.name: n for n in gm.graph.nodes}
    values = analysis.traced.values
    usage = _Usage(gm, weights)
    kept: SiteScales = {}
    for (name, arg, dim), scale in scales.items():
        if name in skip_nodes:
            continue
        node = nodes[name]
        x = values[node.args[arg].name]
        ndim, size = x.dim(), x.shape[dim]
        scale = scale.detach().reshape(-1).float().cpu()
        scale = scale.expand(size).clone() if scale.numel() == 1 else scale
        if scale.numel() != size:
            raise ValueError(f"scale for input {arg} of node '{name}' has {scale.numel()} values for {size} positions")
        if bool((scale == 1).all()) or _absorb_site(node, arg, dim, ndim, scale, weights, usage):
            continue
        if (name, arg) in kept:
            old_dim, old = kept[(name, arg)]
            if old_dim != dim:
                raise ValueError(f"node '{name}' input {arg}: gates along dims {old_dim} and {dim} that no weight "
                                 "can absorb; a pruned graph keeps one multiplier per input")
            scale = old * scale
        kept[(name, arg)] = (dim, scale)
    return kept


def _weights_of(gated: GatedModel) -> fx.GraphModule:
    """A copy of the traced module carrying the gated model's current weights (eval mode)."""
    # the parameters are overwritten at once: allocate them, do not clone the traced ones
    gm = gated.analysis.traced.gm
    weights = copy.deepcopy(gm, {id(p): nn.Parameter(torch.empty_like(p), requires_grad=p.requires_grad)
                                 for p in gm.parameters()})
    prefix = f"{gated._bank_name}."
    state = {k: v for k, v in gated.module.state_dict().items() if not k.startswith(prefix)}
    result = weights.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise FinalizeError(f"the gated model's weights do not match its trace: missing {result.missing_keys[:5]}, "
                            f"unexpected {result.unexpected_keys[:5]}")
    return weights.eval()


def absorb(gated: GatedModel, plan: Optional[PruningPlan] = None) -> tuple[fx.GraphModule, SiteScales]:
    """A copy of the traced model with the gated model's weights and every gate folded into the
    consuming layer (see the module docstring), plus the ``site_scales`` no weight could take.
    With ``plan``, sites inside its removed blocks are skipped."""
    weights = _weights_of(gated)
    removed = plan.removed_blocks if plan is not None else frozenset()
    dead = frozenset(n for b in removed for n in gated.analysis.blocks[b].nodes)
    site_scales = absorb_scales(gated.analysis, weights, gated.bank.site_values(), skip_nodes=dead)
    return weights, site_scales


# --------------------------------------------------------------------------------------------
# 3. finalize
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinalizeReport:
    """What :func:`finalize` did and how close the result is to the gated model."""

    plan: PruningPlan
    check: VerifyResult
    threshold: float
    before: Cost  #: the traced model's cost on the example inputs
    after: Cost  #: the pruned model's
    removed_units: Mapping[int, int] = field(default_factory=dict)  #: group id -> units removed
    forced_units: Mapping[int, int] = field(default_factory=dict)  #: gates <= threshold kept by a limit
    kept_scales: int = 0  #: multipliers left in the pruned graph (gates no weight could absorb)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "max_abs_diff": self.check.max_abs_diff,
                "max_rel_diff": self.check.max_rel_diff, "equal": self.check.ok,
                "flops_before": self.before.flops, "flops_after": self.after.flops,
                "params_before": self.before.params, "params_after": self.after.params,
                "removed_units": sum(self.removed_units.values()), "forced_units": sum(self.forced_units.values()),
                "removed_blocks": sorted(self.plan.removed_blocks), "kept_scales": self.kept_scales,
                "plan": self.plan.to_dict()}


def _run_eval(module: nn.Module, inputs: Sequence[Any]) -> Any:
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(*inputs)
    finally:
        module.train(was)


def _device_of(module: nn.Module) -> torch.device:
    return next((t.device for t in module.parameters()), torch.device("cpu"))


def _forced_units(gated: GatedModel, plan: PruningPlan, threshold: float) -> dict[int, int]:
    """Per group: free units with a gate <= threshold that the plan keeps (limits forced it)."""
    analysis = gated.analysis
    with torch.no_grad():
        groups, _ = gated.bank.split(gated.bank.flat())
    out = {}
    for gid, gates in groups.items():
        if selection.inside_removed_blocks(analysis, gid, plan.removed_blocks):
            continue
        g = analysis.groups[gid]
        kept = torch.zeros(g.size, dtype=torch.bool)
        kept[list(plan.keep.get(gid, range(g.size)))] = True
        n = int((kept & ~g.frozen_units & (gates.detach().cpu() <= threshold)).sum())
        if n:
            out[gid] = n
    return out


def finalize(gated: GatedModel, *, threshold: Optional[float] = None, tolerance: float = 1e-4,
             inputs: Optional[Sequence[Any]] = None) -> tuple[fx.GraphModule, FinalizeReport]:
    """The pruned model reproducing ``gated`` and a report; ``gated`` is left as it was.

    Args:
        threshold: gates at or below it are removed (default: the policy's
            ``regularizer.threshold``).
        tolerance: allowed relative difference between the gated and pruned outputs in eval
            mode (max abs diff over the largest reference magnitude).
        inputs: inputs for the comparison (default: the example inputs given to ``attach``).

    Raises:
        FinalizeError: the outputs differ by more than ``tolerance`` and the plan removes no
            unit of an inexact group (whose removal is allowed to change outputs).
    """
    analysis = gated.analysis
    threshold = gated.threshold if threshold is None else float(threshold)
    plan = plan_from_gates(analysis, gated.bank, gated.resolution, threshold)
    weights, site_scales = absorb(gated, plan)
    pruned = rewrite(analysis, plan, weights=weights, site_scales=site_scales, copy_weights=False)
    device = _device_of(gated)
    pruned.to(device)

    def on_device(xs: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(x.to(device) if isinstance(x, Tensor) else x for x in xs)

    example = on_device(analysis.traced.example_inputs)
    compared = on_device(inputs) if inputs is not None else example
    expected = _run_eval(gated, compared)
    with FlopCounterMode(display=False) as counter:  # one run of the pruned model: compared and counted
        actual = _run_eval(pruned, compared)
    check = compare_outputs(expected, actual, tolerance)
    if not check.ok and not plan.allow_inexact:
        raise FinalizeError(f"the finalized model does not reproduce the gated model: {check}\n{plan.summary(analysis)}")
    forced = _forced_units(gated, plan, threshold)
    after = Cost(float(counter.get_total_flops()), count_params(pruned)) if compared is example \
        else model_cost(pruned, example)
    report = FinalizeReport(plan=plan, check=check, threshold=threshold, before=traced_cost(analysis),
                            after=after,
                            removed_units={g: len(plan.removed_units(analysis, g)) for g in plan.keep},
                            forced_units=forced, kept_scales=len(site_scales))
    pruned.train(gated.training)
    return pruned, report
