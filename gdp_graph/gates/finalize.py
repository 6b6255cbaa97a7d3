"""Turn a trained :class:`~gdp_graph.gates.model.GatedModel` into the exact smaller model.

Three steps, each usable on its own:

1. :func:`~gdp_graph.gates.cut.plan_from_gates`: units whose gate is ``<= threshold`` are removed, within the
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

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from gdp_graph.graph.cost import Cost, count_params, model_cost, traced_cost
from gdp_graph.graph.model_copy import deepcopy_model
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.prune.rewrite import SiteScales, rewrite_graph
from gdp_graph.prune.verify import VerifyResult, compare_outputs
from gdp_graph.errors import GdpError
from gdp_graph.gates import selection
from gdp_graph.gates.absorb import absorb_scales
from gdp_graph.gates.cut import plan_from_gates
from gdp_graph.gates.hooks import run_as_called
from gdp_graph.gates.model import GatedModel

__all__ = ["FinalizeError", "FinalizeReport", "absorb", "absorb_scales", "finalize", "plan_from_gates"]


class FinalizeError(GdpError, RuntimeError):
    """The finalized model does not reproduce the gated model (the message says by how much)."""


# --------------------------------------------------------------------------------------------
# absorbing the gates into weights
# --------------------------------------------------------------------------------------------

def _weights_of(gated: GatedModel) -> fx.GraphModule:
    """A copy of the traced module carrying the gated model's current weights (eval mode)."""
    # the parameters are overwritten at once: allocate them, do not clone the traced ones
    gm = gated.analysis.traced.gm
    weights = deepcopy_model(gm, {id(p): nn.Parameter(torch.empty_like(p), requires_grad=p.requires_grad)
                                 for p in gm.parameters()})
    prefix = f"{gated._bank_name}."
    state = {k: v for k, v in gated.module.state_dict().items() if not k.startswith(prefix)}
    if not isinstance(gated.module, fx.GraphModule):  # the class with gate hooks (gates.hooks): the
        # graph's constants include the class's non-persistent buffers, and not what it never reads
        wanted = weights.state_dict().keys()
        state = {k: v for k, v in {**dict(gated.module.named_buffers()), **state}.items() if k in wanted}
    result = weights.load_state_dict(state, strict=False)
    # a plain tensor attribute (Ultralytics' Detect.stride) is a constant of an exported graph,
    # not a tensor of the class: the trace's value is the one
    known = {n for n, _ in [*gated.module.named_parameters(), *gated.module.named_buffers()]} | state.keys()
    missing = [k for k in result.missing_keys if k in known or isinstance(gated.module, fx.GraphModule)]
    if missing or result.unexpected_keys:
        raise FinalizeError(f"the gated model's weights do not match its trace: missing {missing[:5]}, "
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
# finalize
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
                "removed_by_group": {str(g): n for g, n in sorted(self.removed_units.items()) if n},
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
    groups, _ = gated.bank.values()
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
    pruned = rewrite_graph(analysis, plan, weights=weights, site_scales=site_scales, copy_weights=False)
    device = _device_of(gated)
    pruned.to(device)

    def on_device(xs: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(pytree.tree_map_only(Tensor, lambda t: t.to(device), tuple(xs)))

    example = on_device(analysis.traced.example_inputs)
    compared = on_device(inputs) if inputs is not None else example
    if inputs is None and not isinstance(gated.module, fx.GraphModule):  # the class with gate hooks
        expected = run_as_called(gated, analysis, device)
    else:
        expected = _run_eval(gated, compared)
    with FlopCounterMode(display=False) as counter:  # one run of the pruned model: compared and counted
        actual = _run_eval(pruned, compared)
    check = compare_outputs(expected, actual, tolerance)
    if not check.ok and not plan.allow_inexact:
        raise FinalizeError(f"the finalized model does not reproduce the gated model: {check}\n"
                            f"{plan.summary(analysis)}")
    forced = _forced_units(gated, plan, threshold)
    after = Cost(float(counter.get_total_flops()), count_params(pruned)) if compared is example \
        else model_cost(pruned, example)
    report = FinalizeReport(plan=plan, check=check, threshold=threshold, before=traced_cost(analysis),
                            after=after,
                            removed_units=plan.removed_counts(analysis),
                            forced_units=forced, kept_scales=len(site_scales))
    pruned.train(gated.training)
    return pruned, report
