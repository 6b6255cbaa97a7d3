"""Check a pruned model against the *gated reference*: the original model with the removed
units' gates at zero (their channels multiplied by 0 wherever a layer consumes them) and the
removed blocks' inputs at zero. Exactness is measured, never assumed.

A model that holds float16 or bfloat16 tensors is compared in float32 (:func:`run_for_comparison`):
in half precision a correct rewrite sums in another order and rounds differently, which on a deep
model drifts by a percent, the size of a real error; in float32 both sides compute the same function
of the same stored weights, so the tolerance keeps its meaning and a wrong plan still stands out."""

from __future__ import annotations

from dataclasses import dataclass
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
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
    max_abs = max((float((r.double() - c.double()).abs().max()) if r.numel() else 0.0 for r, c in zip(ref, cand)),
                  default=0.0)
    scale = max((float(r.double().abs().max()) if r.numel() else 0.0 for r in ref), default=0.0)
    rel = max_abs / scale if scale > 0 else max_abs
    inconclusive = _degenerate(ref)
    ok = rel <= tolerance and not inconclusive
    return VerifyResult(max_abs, rel, scale, ok, tolerance, inconclusive)


HALF = (torch.float16, torch.bfloat16)


def half_dtypes(module: nn.Module) -> set[torch.dtype]:
    """The half-precision dtypes among ``module``'s parameters and buffers."""
    return {t.dtype for t in (*module.parameters(), *module.buffers()) if t.dtype in HALF}


@contextmanager
def float32_tensors(module: nn.Module) -> Iterator[None]:
    """Hold ``module``'s float16/bfloat16 parameters and buffers in float32 inside the block,
    then put back each one's dtype (exact: every half value is a float32 value). The Parameter
    objects stay the same, so tied weights stay tied."""
    changed: list[tuple[nn.Module, str, str, torch.dtype]] = []
    seen: set[int] = set()
    for owner in module.modules():
        for kind in ("_parameters", "_buffers"):
            for key, tensor in getattr(owner, kind).items():
                if tensor is None or tensor.dtype not in HALF or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                changed.append((owner, kind, key, tensor.dtype))
                _set_tensor(owner, kind, key, tensor.float())
    try:
        yield
    finally:
        for owner, kind, key, dtype in changed:
            _set_tensor(owner, kind, key, getattr(owner, kind)[key].to(dtype))


def _set_tensor(owner: nn.Module, kind: str, key: str, value: torch.Tensor) -> None:
    if kind == "_parameters":
        owner._parameters[key].data = value  # the same Parameter: shared ones change together
    else:
        owner._buffers[key] = value


def _to_float32(value: Any) -> Any:
    """A half tensor or dtype as float32; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.dtype in HALF:
        return value.float()
    if isinstance(value, torch.dtype) and value in HALF:
        return torch.float32
    return value


class _Float32Interpreter(fx.Interpreter):
    """Runs a graph with every half dtype it names (casts and factories baked in by
    torch.export, ``x.half()``) read as float32, and half tensor attributes upcast."""

    def get_attr(self, target, args, kwargs):
        return _to_float32(super().get_attr(target, args, kwargs))

    def call_function(self, target, args, kwargs):
        args, kwargs = pytree.tree_map(_to_float32, (args, kwargs))
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        args, kwargs = pytree.tree_map(_to_float32, (args, kwargs))
        return super().call_method("float" if target in ("half", "bfloat16") else target, args, kwargs)


def run_for_comparison(module: nn.Module, args: Sequence[Any], kwargs: Optional[dict[str, Any]] = None) -> Any:
    """``module(*args, **kwargs)`` in eval mode without gradients, as verification runs it: in
    float32 where the module holds float16/bfloat16 tensors (inputs upcast too), so that two
    computations of the same function agree to float32 precision. The module is left as it was."""
    kwargs = dict(kwargs or {})
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if not half_dtypes(module):
                return module(*args, **kwargs)
            args, kwargs = pytree.tree_map(_to_float32, (tuple(args), kwargs))
            with float32_tensors(module):
                if isinstance(module, fx.GraphModule) and not kwargs:
                    return _Float32Interpreter(module).run(*args)
                return module(*args, **kwargs)
    finally:
        module.train(was_training)


def reference_output(analysis: Analysis, plan: PruningPlan, inputs: Optional[Sequence[Any]] = None) -> Any:
    """The gated reference's output on ``inputs`` (default: the example inputs), in eval mode
    (in float32 for a half-precision model, see :func:`run_for_comparison`)."""
    inputs = tuple(inputs) if inputs is not None else analysis.traced.example_inputs
    return run_for_comparison(gated_reference(analysis, plan), inputs)


def verify(analysis: Analysis, plan: PruningPlan, pruned: nn.Module,
           inputs: Optional[Sequence[Any]] = None, tolerance: float = 1e-4, expected: Any = None) -> VerifyResult:
    """Compare ``pruned`` with the gated reference on ``inputs`` (default: the example inputs),
    in eval mode, in float32 for a half-precision model (:func:`run_for_comparison`). A model of the user's own class
    (``rewrite`` keeps it by default) is called as the user calls it (keyword inputs).
    ``expected``: the reference's output, when the caller computed it already."""
    own_class = inputs is None and analysis.traced.inputs is not None and not isinstance(pruned, fx.GraphModule)
    inputs = tuple(inputs) if inputs is not None else analysis.traced.example_inputs
    if expected is None:
        expected = reference_output(analysis, plan, inputs)
    if own_class:
        actual = run_for_comparison(pruned, analysis.traced.inputs.args, analysis.traced.inputs.kwargs)
    else:
        actual = run_for_comparison(pruned, inputs)
    return compare_outputs(expected, actual, tolerance)
