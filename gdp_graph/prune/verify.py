"""Check a pruned model against the *gated reference*: the original model with the removed
units' gates at zero (their channels multiplied by 0 wherever a layer consumes them) and the
removed blocks' inputs at zero. Exactness is measured, never assumed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.inputs import output_tensors
from gdp_graph.graph.inject import FixedScales, collect_sites, insert_site_multipliers, site_mask
from gdp_graph.prune.plan import PruningPlan


@dataclass(frozen=True)
class VerifyResult:
    max_abs_diff: float
    max_rel_diff: float  #: max abs diff divided by the reference output's max magnitude
    output_scale: float
    ok: bool
    tolerance: float
    #: why the comparison proves nothing (a constant or all-zero reference output), else ""
    inconclusive: str = ""

    def __str__(self) -> str:
        verdict = "NOT VERIFIED" if self.inconclusive else "equal" if self.ok else "DIFFERENT"
        text = (f"{verdict}: max |diff| {self.max_abs_diff:.3g}, relative {self.max_rel_diff:.3g} "
                f"(tolerance {self.tolerance:g} of output scale {self.output_scale:.3g})")
        return f"{text}; {self.inconclusive}" if self.inconclusive else text


def gated_reference(analysis: Analysis, plan: PruningPlan) -> fx.GraphModule:
    """The traced model with fixed 0/1 multipliers where the plan removes units or blocks, put
    in by the same graph pass as the training gates (:func:`insert_site_multipliers`)."""
    kept = {}
    for gid, keep in plan.keep.items():
        mask = torch.zeros(analysis.groups[gid].size, dtype=torch.bool)
        mask[list(keep)] = True
        kept[gid] = mask
    sites = collect_sites(analysis, sorted(kept), sorted(plan.removed_blocks))
    masks = [site_mask(site, kept, plan.removed_blocks) for site in sites]
    return insert_site_multipliers(analysis, FixedScales(masks), sites, "_gdp_masks")


def _degenerate(ref: list[torch.Tensor]) -> str:
    """Why equality with this reference output would prove nothing, or ""."""
    floats = [r for r in ref if r.is_floating_point() and r.numel()]
    if not floats:
        return "the reference output has no floating-point values"
    if all(bool((r == 0).all()) for r in floats):
        return "the reference output is all zeros, so equality proves nothing (randomize the weights)"
    if all(bool((r == r.reshape(-1)[0]).all()) for r in floats):
        return "the reference output is constant, so equality proves nothing (randomize the weights)"
    return ""


def compare_outputs(reference: Any, candidate: Any, tolerance: float) -> VerifyResult:
    """Compare two model outputs (tensors, tuples, dicts, dataclasses, ``ModelOutput``s).

    Never calls a comparison exact when the reference output is all zeros or constant: a
    model with zero-initialized heads or collapsed activations would pass any rewrite.
    """
    ref, cand = output_tensors(reference), output_tensors(candidate)
    if len(ref) != len(cand) or any(r.shape != c.shape for r, c in zip(ref, cand)):
        shapes = [tuple(t.shape) for t in ref], [tuple(t.shape) for t in cand]
        raise ValueError(f"output structure differs: reference {shapes[0]} vs pruned {shapes[1]}")
    max_abs = max((float((r.double() - c.double()).abs().max()) if r.numel() else 0.0 for r, c in zip(ref, cand)), default=0.0)
    scale = max((float(r.double().abs().max()) if r.numel() else 0.0 for r in ref), default=0.0)
    rel = max_abs / scale if scale > 0 else max_abs
    inconclusive = _degenerate(ref)
    ok = rel <= tolerance and not inconclusive
    return VerifyResult(max_abs, rel, scale, ok, tolerance, inconclusive)


def reference_output(analysis: Analysis, plan: PruningPlan, inputs: Optional[Sequence[Any]] = None) -> Any:
    """The gated reference's output on ``inputs`` (default: the example inputs), in eval mode."""
    inputs = tuple(inputs) if inputs is not None else analysis.traced.example_inputs
    with torch.no_grad():
        return gated_reference(analysis, plan).eval()(*inputs)


def verify(analysis: Analysis, plan: PruningPlan, pruned: nn.Module,
           inputs: Optional[Sequence[Any]] = None, tolerance: float = 1e-4, expected: Any = None) -> VerifyResult:
    """Compare ``pruned`` with the gated reference on ``inputs`` (default: the example inputs),
    in eval mode and float precision as given. A model of the user's own class
    (``rewrite`` keeps it by default) is called as the user calls it (keyword inputs).
    ``expected``: the reference's output, when the caller computed it already."""
    own_class = inputs is None and analysis.traced.inputs is not None and not isinstance(pruned, fx.GraphModule)
    inputs = tuple(inputs) if inputs is not None else analysis.traced.example_inputs
    if expected is None:
        expected = reference_output(analysis, plan, inputs)
    was_training = pruned.training
    pruned.eval()
    try:
        with torch.no_grad():
            actual = analysis.traced.inputs.call(pruned) if own_class else pruned(*inputs)
    finally:
        pruned.train(was_training)
    return compare_outputs(expected, actual, tolerance)
