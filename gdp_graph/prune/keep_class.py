"""A pruned model that keeps the user's class: ``LlamaForCausalLM`` stays ``LlamaForCausalLM``.

The plan's slice map (:mod:`gdp_graph.prune.slices`) is applied to a deep copy of the traced
model (its own class, code, hooks and, for a Hugging Face model, its config and ``generate``):
every parameter and buffer is sliced as the map says (or replaced by the same-named tensor of a
GraphModule trained since), and the attributes the map changes follow: the layers' sizes that
their rules' ``sizes`` hooks derive (``in_features``, ``out_channels``, ``num_features``,
``normalized_shape``, ...) and attention modules' head counts (``num_heads``,
``num_key_value_heads``, ``all_head_size``, ``split_size``, ...). The submodules of removed
residual branches are replaced in place by stand-ins that return the branch's constant term
(:mod:`gdp_graph.prune.removed_branch`). The Hugging Face config is updated where the result is uniform
(every layer keeps the same heads and MLP width, no block removed) and the class builds those
shapes from it (:mod:`gdp_graph.prune.hf_config`), so ``save_pretrained`` / ``from_pretrained``
round-trip.

Then the real forward runs on the example inputs and is compared with the gated reference (or
with the output the caller gives). The class's Python code may hold constants the plan breaks (a
hard-coded width, a branch computed in the parent's own ``forward``): then :func:`keep_class`
says why and the caller keeps the GraphModule.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.model_copy import deepcopy_model
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.graph.frontend_export import first_line
from gdp_graph.prune.removed_branch import KeepClassError, StandIns, plan_stand_ins
from gdp_graph.prune.slices import SliceMap, slice_map
from gdp_graph.prune.hf_config import update_config_widths
from gdp_graph.prune.verify import VerifyResult, compare_outputs, reference_output, run_for_comparison

#: ``node.meta`` keys the GraphModule rewrite puts on the ``get_attr`` nodes it adds: a removed
#: block's constant term (the block id), a kept gate scale (True)
BLOCK_CONSTANT_META = "gdp_removed_block"
SITE_SCALE_META = "gdp_site_scale"


class KeepClassWarning(UserWarning):
    """Something of the user's class was lost: ``rewrite`` had to return the GraphModule (the
    message says why), or hooks of the user's modules are dropped (by the GraphModule, or with
    the submodules of removed branches that the kept class replaces)."""


@dataclass
class KeptClass:
    """The result of :func:`keep_class`: the model (None when the class could not be kept),
    why not, and its verification."""

    model: Optional[nn.Module]
    reason: str
    verify: Optional[VerifyResult] = None
    config_updated: bool = False
    #: modules with hooks that were replaced by stand-ins of removed branches (hooks dropped)
    dropped_hooks: list[str] = field(default_factory=list)


def keep_class(analysis: Analysis, plan: PruningPlan, smap: SliceMap, tolerance: float = 1e-4,
               expected: Any = None, *, tensors: Optional[Mapping[str, torch.Tensor]] = None,
               against_pruned: bool = False) -> KeptClass:
    """Apply the slice map ``smap`` of ``plan`` to a copy of the traced model's own class and
    verify it against ``expected``: the gated reference's output on the example inputs (computed
    when not given), or with ``against_pruned`` the output the caller gives.

    The copy's tensors are the map applied to the original ones, or ``tensors`` (by the same
    names: a GraphModule's, possibly trained since) where given; its attributes and config
    change as the map says, and removed branches become stand-ins returning their constants."""
    traced = analysis.traced
    if traced.module is None or traced.inputs is None:
        return KeptClass(None, "the analysis holds no copy of the model's class")
    if getattr(plan, "allow_inexact", False) and not against_pruned:
        return KeptClass(None, "an inexact plan cannot be verified against the gated reference")
    model = deepcopy_model(traced.module)
    try:
        stand_ins = _stand_ins(model, analysis, plan, smap)
    except KeepClassError as exc:
        return KeptClass(None, str(exc))
    except Exception as exc:  # noqa: BLE001 - the class's forward, run to see what its submodules return
        return KeptClass(None, f"the class's forward fails on the example inputs: {first_line(exc)}")
    _swap_tensors(model, tensors if tensors is not None else _sliced_tensors(model, smap))
    for name, changes in smap.attribute_changes.items():
        module = _submodule(model, name)
        for key, value in changes.items() if module is not None else ():
            setattr(module, key, value)
    stand_ins.apply(model)
    # a config describes every layer alike: it cannot say that a layer lost its attention
    config_updated = False if plan.removed_blocks else update_config_widths(model, analysis, plan)
    try:
        if expected is None:
            expected = reference_output(analysis, plan)
        actual = run_for_comparison(model.eval(), traced.inputs.args, traced.inputs.kwargs)  # float32 if half
        result = compare_outputs(expected, actual, tolerance)
    except Exception as exc:  # noqa: BLE001 - the class's code did not accept the new sizes
        return KeptClass(None, f"the class's forward fails on the pruned sizes: {first_line(exc)}")
    if not result.ok:
        reference = "the pruned GraphModule" if against_pruned else "the gated reference"
        return KeptClass(None, f"the class's forward differs from {reference} ({result})", result)
    return KeptClass(model, "", result, config_updated, stand_ins.dropped_hooks)


def keep_class_of(analysis: Analysis, plan: PruningPlan, pruned: fx.GraphModule, tolerance: float = 1e-4) -> KeptClass:
    """The class with the tensors of ``pruned`` as they are now (finalized with absorbed gates,
    fine-tuned since), verified against ``pruned`` itself on the example inputs."""
    expected = run_for_comparison(pruned, analysis.traced.example_inputs)
    tensors = {**dict(pruned.named_parameters()), **dict(pruned.named_buffers())}
    try:
        tensors.update(_fold_site_scales(pruned, tensors))
    except KeepClassError as exc:
        return KeptClass(None, str(exc))
    smap = slice_map(analysis, plan, constants=False)
    found = _graph_constants(pruned)
    smap = dataclasses.replace(smap, removed_branches={
        b: dataclasses.replace(r, constant=found.get(b)) for b, r in smap.removed_branches.items()})
    return keep_class(analysis, plan, smap, tolerance, expected, tensors=tensors, against_pruned=True)


def class_or_graph(analysis: Analysis, plan: PruningPlan, pruned: fx.GraphModule, smap: SliceMap,
                   checked: Optional[VerifyResult], *, wanted: Optional[bool], tolerance: float, expected: Any,
                   check: bool) -> KeptClass:
    """The kept class when asked for (``wanted``: ``apply_plan``'s ``keep_class``) or by default
    where it verifies (``checked``: the GraphModule's verification); its ``model`` is None with
    the ``reason`` otherwise. A :class:`KeepClassWarning` names what is lost either way (the
    class, hooks)."""
    why_not = _why_not_the_class(analysis, plan, checked, wanted, check)
    if why_not is None:
        kept = keep_class(analysis, plan, smap, tolerance, expected)
        if kept.model is not None:
            if kept.dropped_hooks:
                warnings.warn(f"hooks on {', '.join(kept.dropped_hooks)} are dropped: those modules belong to removed "
                              f"residual branches and were replaced by stand-ins", KeepClassWarning, stacklevel=4)
            return kept
        hooked = _hooks_missing_from(analysis, pruned)
        dropped = f"; hooks on {', '.join(hooked)} are not in the GraphModule" if hooked else ""
        warnings.warn(f"returning a GraphModule, not {type(analysis.traced.module).__name__}: {kept.reason}{dropped}",
                      KeepClassWarning, stacklevel=4)
        return KeptClass(None, kept.reason, kept.verify, dropped_hooks=hooked)
    hooked = _hooks_missing_from(analysis, pruned)
    if hooked:
        warnings.warn(f"hooks on {', '.join(hooked)} are not in the pruned GraphModule ({why_not}; a rewrite that "
                      f"keeps the class keeps them)", KeepClassWarning, stacklevel=4)
    return KeptClass(None, why_not, dropped_hooks=hooked)


def _why_not_the_class(analysis: Analysis, plan: PruningPlan, checked: Optional[VerifyResult],
                       wanted: Optional[bool], check: bool) -> Optional[str]:
    """Why the class is not tried (None: try it)."""
    if wanted is False:
        return "keep_class=False asked for the GraphModule"
    if wanted:
        return None
    if analysis.traced.module is None or analysis.traced.inputs is None:
        return "the analysis holds no copy of the model's class"
    if plan.allow_inexact:
        return "an inexact plan cannot be verified against the gated reference"
    if not check:
        return "check=False: nothing verifies the class's forward"
    if checked is None or not checked.ok:
        return "the GraphModule itself differs from the gated reference"
    return None


def _hooks_missing_from(analysis: Analysis, pruned: nn.Module) -> list[str]:
    """Modules of the user's model with forward/backward hooks that the GraphModule lacks (the
    root and containers, which fx traces through; every module with torch.export)."""
    kept = dict(pruned.named_modules())
    found = []
    for name, m in (analysis.traced.module or nn.Module()).named_modules():
        if not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks):
            continue
        twin = kept.get(name) if name else None
        if twin is None or not (twin._forward_hooks or twin._forward_pre_hooks or twin._backward_hooks):
            found.append(name or f"the root {type(m).__name__}")
    return found


_LINEAR = (torch.ops.aten.linear.default, torch.nn.functional.linear)


def _fold_site_scales(pruned: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights of the layers that finalize's kept gate scales feed, with the scales folded
    in (``linear(x * s, W) = linear(x, W * s)``): the class has no place for the multiplication."""
    folded: dict[str, torch.Tensor] = {}
    if not isinstance(pruned, fx.GraphModule):
        return folded
    for node in pruned.graph.nodes:
        if node.op != "get_attr" or not node.meta.get(SITE_SCALE_META):
            continue
        scale = tensors[str(node.target)]
        muls = list(node.users)
        layer = next(iter(muls[0].users)) if len(muls) == 1 and len(muls[0].users) == 1 else None
        weight = None
        if layer is not None and layer.args and layer.args[0] is muls[0]:
            if layer.op == "call_function" and layer.target in _LINEAR \
                    and getattr(layer.args[1], "op", "") == "get_attr":
                weight = str(layer.args[1].target)
            elif layer.op == "call_module" and isinstance(pruned.get_submodule(str(layer.target)), nn.Linear):
                weight = f"{layer.target}.weight"
        if weight is None or scale.reshape(-1).shape[0] != scale.shape[-1]:
            raise KeepClassError(f"the gate scale '{node.target}' that finalize kept feeds no linear layer to fold it "
                                 f"into; the class has no place for the multiplication")
        folded[weight] = folded.get(weight, tensors[weight]).detach() * scale.reshape(1, -1)
    return folded


def _graph_constants(pruned: nn.Module) -> dict[int, torch.Tensor]:
    """The removed blocks' constant terms the GraphModule adds, by block id."""
    if not isinstance(pruned, fx.GraphModule):
        return {}
    return {node.meta[BLOCK_CONSTANT_META]: pruned.get_buffer(str(node.target)) for node in pruned.graph.nodes
            if node.op == "get_attr" and BLOCK_CONSTANT_META in node.meta}


def _stand_ins(model: nn.Module, analysis: Analysis, plan: PruningPlan, smap: SliceMap) -> StandIns:
    """The stand-ins of the removed branches, returning their constant terms."""
    if not plan.removed_blocks:
        return StandIns()
    constants = {}
    for bid, branch in smap.removed_branches.items():
        # a zero constant in the dtype the block adds (a bfloat16 model's stand-ins stay bfloat16)
        added = analysis.traced.values.get(analysis.blocks[bid].add_node)
        dtype = added.dtype if isinstance(added, torch.Tensor) else None
        constants[bid] = branch.constant if branch.constant is not None else torch.zeros(branch.shape, dtype=dtype)
    return plan_stand_ins(model, analysis, sorted(plan.removed_blocks), constants)


def _sliced_tensors(model: nn.Module, smap: SliceMap) -> dict[str, torch.Tensor]:
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {name: smap.apply_to_tensor(name, t) for name, t in named if smap.keeps(name)}


def _submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _swap_tensors(model: nn.Module, new_tensors: Mapping[str, torch.Tensor]) -> None:
    """Put every parameter/buffer of ``new_tensors`` that differs (shrunk, or trained since the
    analysis) in place."""
    entries = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    # tied tensors (input and output embeddings): the graph keeps one name, and all of them
    # must get that one new tensor, still shared
    aliases: dict[int, list[str]] = {}
    for name, t in entries:
        aliases.setdefault(id(t), []).append(name)
    made: dict[int, torch.Tensor] = {}
    for name, old in entries:
        new = next((new_tensors[a] for a in [name, *aliases[id(old)]] if a in new_tensors), None)
        if new is None or _same(new, old):
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if id(old) not in made:
            made[id(old)] = (nn.Parameter(new.detach().clone(), requires_grad=old.requires_grad)
                             if isinstance(old, nn.Parameter) else new.detach().clone())
        if isinstance(old, nn.Parameter):
            setattr(owner, leaf, made[id(old)])
        else:
            owner._buffers[leaf] = made[id(old)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
