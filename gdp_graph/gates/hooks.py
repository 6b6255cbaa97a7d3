"""Gates on the user's own class: forward pre-hooks at the inputs of the consuming modules.

A graph captured by ``torch.export`` is pinned to the example's shapes where the model's code
computes with sizes (a decoder's attention masks and head reshapes), and it is a GraphModule,
not the user's class, so Trainer's gradient checkpointing, FSDP wrap policies keyed on the
model's layer classes, ``generate`` and ``labels=`` do not reach it. Where every gate site is an
input of one submodule (the projections of a decoder, the linear layers of an MLP), the gated
model is instead a copy of the user's model with:

* the gate provider (the :class:`~gdp_graph.gates.bank.GateBank`) as a child, called once per
  forward by a pre-hook on the root, which keeps the multipliers for that forward;
* one pre-hook per site on the consuming module, multiplying its positional input by the
  site's multiplier (broadcast over batch and sequence, so any batch size and length runs).

The copy is checked against the graph with the same multipliers (random ones, so a gate at the
wrong input shows) on the example inputs before it is used; where a site is not a module's input
or the check differs, the gated model stays the graph (:func:`gated_module` says why).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import Tensor, nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.frontend_export import module_of
from gdp_graph.graph.inject import FixedScales, SiteSpec, gate_multiply, insert_site_multipliers
from gdp_graph.graph.model_copy import deepcopy_model, private_copy

__all__ = ["ClassForward", "consuming_module", "gated_module", "hooked_model", "run_as_called"]


def _inside(name: Optional[str], module: str) -> bool:
    return name is not None and (name == module or name.startswith(module + "."))


def consuming_module(gm: fx.GraphModule, node: fx.Node, arg: int) -> Optional[tuple[str, int]]:
    """``(module, positional index)`` when input ``arg`` of ``node`` is exactly an input of one
    submodule call (a ``call_module`` node of torch.fx, or the module an exported op runs in
    when the tensor comes from outside it and nothing else inside it reads the tensor)."""
    source = node.args[arg] if arg < len(node.args) else None
    if not isinstance(source, fx.Node):
        return None
    if node.op == "call_module":
        return str(node.target), arg
    owner = module_of(node)
    if not owner or _inside(module_of(source), owner) or source.op == "placeholder" and owner == "":
        return None
    inside = [u for u in source.users if _inside(module_of(u), owner)]
    return (owner, 0) if inside == [node] and arg == 0 else None


class _Scales:
    """The multipliers of the current forward (the root's pre-hook computes them once)."""

    def __init__(self) -> None:
        self.values: tuple[Tensor, ...] = ()


class _ProviderHook:
    """The root's pre-hook: calls the provider child once per forward. Objects, not closures,
    so a deep copy of the model gets hooks that point at the copy."""

    def __init__(self, name: str, scales: _Scales):
        self.name, self.scales = name, scales

    def __call__(self, root: nn.Module, _args: Any) -> None:
        self.scales.values = getattr(root, self.name)()


class _SiteHook:
    """A consuming module's pre-hook: its positional input ``index`` times multiplier ``i``."""

    def __init__(self, scales: _Scales, i: int, index: int):
        self.scales, self.i, self.index = scales, i, index

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if self.index >= len(args) or not isinstance(args[self.index], Tensor):
            raise RuntimeError(f"gate hook {self.i}: expected a tensor as positional input {self.index}")
        gated = list(args)
        gated[self.index] = gate_multiply(args[self.index], self.scales.values[self.i])
        return tuple(gated)


def hooked_model(analysis: Analysis, provider: nn.Module, sites: Sequence[SiteSpec], name: str,
                 share_weights: bool = False) -> tuple[Optional[nn.Module], str]:
    """A copy of the traced model's own class gated by ``provider`` (one multiplier per site,
    as :func:`~gdp_graph.graph.inject.insert_site_multipliers` takes it) through pre-hooks, and
    ``""``; or None and why not. The copy owns its weights (training it leaves the analysis and
    the user's model alone) unless ``share_weights``."""
    traced = analysis.traced
    if traced.module is None:
        return None, "the analysis holds no copy of the model's class"
    nodes = {n.name: n for n in traced.gm.graph.nodes}
    targets = []
    for site in sites:
        found = consuming_module(traced.gm, nodes[site.node], site.arg)
        if found is None:
            return None, f"gate site {site.describe()} is not the input of one submodule"
        targets.append(found)
    model = private_copy(traced.module) if share_weights else deepcopy_model(traced.module)
    model.add_module(name, provider)
    scales = _Scales()
    model.register_forward_pre_hook(_ProviderHook(name, scales))
    for i, (module, index) in enumerate(targets):
        model.get_submodule(module).register_forward_pre_hook(_SiteHook(scales, i, index))
    return model, ""


def _same_function(analysis: Analysis, sites: Sequence[SiteSpec], name: str) -> str:
    """Whether the hooked copy computes what the graph does, with the same random multipliers
    (empty: it does; else why not)."""
    from gdp_graph.prune.verify import compare_outputs

    generator = torch.Generator().manual_seed(0)
    device = next((p.device for p in analysis.traced.gm.parameters()), torch.device("cpu"))
    values = [(0.25 + 0.75 * torch.rand(s.shape if -1 not in s.shape else (s.size,), generator=generator))
              .reshape(s.shape).to(device) for s in sites]
    graph = insert_site_multipliers(analysis, FixedScales([v.clone() for v in values]), sites, name)
    model, why = hooked_model(analysis, FixedScales(values), sites, name, share_weights=True)
    if model is None:
        return why
    with torch.no_grad():
        expected = graph.eval()(*analysis.traced.example_inputs)
        actual = analysis.traced.inputs.call(model.eval())
    result = compare_outputs(expected, actual, 1e-4)
    return "" if result.ok else f"the class with gate hooks differs from the gated graph ({result})"


def gated_module(analysis: Analysis, provider: nn.Module, sites: Sequence[SiteSpec],
                 name: str) -> tuple[nn.Module, str]:
    """The gated model's module: for a graph captured by ``torch.export`` (pinned to the
    example's shapes), the user's class with gate hooks where every site allows it and it
    computes what the graph does; else the graph with the multipliers inserted. A torch.fx graph
    takes any batch and size already, and folds a gate into a layer's weight rather than its
    input (cheaper for convolutions): it stays the graph. Returns the module and why the class
    was not used ("" when it was)."""
    reason = "torch.fx graphs take any input size" if analysis.traced.front_end != "export" else ""
    if not reason and analysis.traced.inputs is None:
        reason = "the analysis holds no example inputs of the class"
    if not reason:
        try:
            reason = _same_function(analysis, sites, name)
        except Exception as exc:  # noqa: BLE001 - the class with hooks does not run: keep the graph, say why
            reason = f"the class with gate hooks fails on the example inputs: {type(exc).__name__}: {exc}"
    if not reason:
        model, reason = hooked_model(analysis, provider, sites, name)
        if model is not None:
            return model.train(analysis.traced.module.training), ""
    return insert_site_multipliers(analysis, provider, sites, name), reason


def run_as_called(module: nn.Module, analysis: Analysis, device: torch.device) -> Any:
    """``module`` (the gated model with the class inside) in eval mode, without gradients, on
    the example inputs as the user gave them (the graph takes them flattened instead)."""
    bound = analysis.traced.inputs
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            args, kwargs = pytree.tree_map_only(Tensor, lambda t: t.to(device),
                                                (tuple(bound.args), dict(bound.kwargs)))
            return module(*args, **kwargs)
    finally:
        module.train(was)


class ClassForward:
    """The gated model's ``forward`` when it holds the user's class: calls it, and shows the
    class's signature (Hugging Face ``Trainer`` keeps only the batch columns that ``forward``
    names). An object rather than a closure, so a deep copy calls its own module."""

    def __init__(self, owner: nn.Module):
        self.owner = owner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner.module(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.owner.module.forward)
