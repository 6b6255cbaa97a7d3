"""Check a pruned model against the *gated reference*: the original model with the removed
units' gates at zero (their channels multiplied by 0 wherever a layer consumes them) and the
removed blocks' inputs at zero. Exactness is measured, never assumed."""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.inject import FixedScale, broadcast_shape, insert_multipliers, site_mask
from gdp_graph.prune.plan import PruningPlan


@dataclass(frozen=True)
class VerifyResult:
    max_abs_diff: float
    max_rel_diff: float  #: max abs diff divided by the reference output's max magnitude
    output_scale: float
    ok: bool
    tolerance: float

    def __str__(self) -> str:
        verdict = "equal" if self.ok else "DIFFERENT"
        return (f"{verdict}: max |diff| {self.max_abs_diff:.3g}, relative {self.max_rel_diff:.3g} "
                f"(tolerance {self.tolerance:g} of output scale {self.output_scale:.3g})")


def gated_reference(analysis: Analysis, plan: PruningPlan) -> fx.GraphModule:
    """The traced model with fixed 0/1 masks where the plan removes units or blocks."""
    gm = copy.deepcopy(analysis.traced.gm)
    by_site: dict[tuple[str, int, int], list] = defaultdict(list)
    for gid, kept in plan.keep.items():
        g = analysis.groups[gid]
        unit_kept = torch.zeros(g.size, dtype=torch.bool)
        unit_kept[list(kept)] = True
        for site in g.gate_sites:
            by_site[(site.node, site.arg, site.dim)].append((site, unit_kept))
    items = []
    for (node, arg, dim), entries in by_site.items():
        sites = [s for s, _ in entries]
        mask = site_mask(sites, [k for _, k in entries])
        items.append((node, arg, FixedScale(mask.reshape(broadcast_shape(dim, sites[0].ndim, mask.numel())))))
    for bid in plan.removed_blocks:
        for site in analysis.blocks[bid].gate_sites:
            items.append((site.node, site.arg, FixedScale(torch.zeros(()))))
    return insert_multipliers(gm, items, "_gdp_mask_")


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _flatten(value[k])]
    return []


def compare_outputs(reference: Any, candidate: Any, tolerance: float) -> VerifyResult:
    ref, cand = _flatten(reference), _flatten(candidate)
    if len(ref) != len(cand) or any(r.shape != c.shape for r, c in zip(ref, cand)):
        shapes = [tuple(t.shape) for t in ref], [tuple(t.shape) for t in cand]
        raise ValueError(f"output structure differs: reference {shapes[0]} vs pruned {shapes[1]}")
    max_abs = max((float((r.double() - c.double()).abs().max()) if r.numel() else 0.0 for r, c in zip(ref, cand)), default=0.0)
    scale = max((float(r.double().abs().max()) if r.numel() else 0.0 for r in ref), default=0.0)
    rel = max_abs / scale if scale > 0 else max_abs
    ok = rel <= tolerance or max_abs <= 1e-7
    return VerifyResult(max_abs, rel, scale, ok, tolerance)


def verify(analysis: Analysis, plan: PruningPlan, pruned: nn.Module,
           inputs: Optional[Sequence[Any]] = None, tolerance: float = 1e-4) -> VerifyResult:
    """Compare ``pruned`` with the gated reference on ``inputs`` (default: the example inputs),
    in eval mode and float precision as given."""
    inputs = tuple(inputs) if inputs is not None else analysis.traced.example_inputs
    reference = gated_reference(analysis, plan).eval()
    was_training = pruned.training
    pruned.eval()
    try:
        with torch.no_grad():
            expected = reference(*inputs)
            actual = pruned(*inputs)
    finally:
        pruned.train(was_training)
    return compare_outputs(expected, actual, tolerance)
