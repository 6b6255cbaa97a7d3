"""A pruned model that keeps the user's class: ``LlamaForCausalLM`` stays ``LlamaForCausalLM``.

The plan is applied to a deep copy of the traced model (its own class, code, hooks and, for a
Hugging Face model, its config and ``generate``): every parameter and buffer of the GraphModule
rewrite that differs is swapped in under the same qualified name, the size attributes of the
layers that hold them follow (``in_features``, ``out_channels``, ``num_features``,
``normalized_shape``, ...), and attention modules' head counts are scaled by the share of heads
kept (``num_heads``, ``num_key_value_heads``, ``all_head_size``, ``split_size``, ...). The
submodules of removed residual branches are replaced in place by stand-ins that return the
branch's constant term (:mod:`gdp_graph.prune.removed_branch`). The Hugging Face config is
updated where the result is uniform (every layer keeps the same heads and MLP width, no block
removed) and the class builds those shapes from it (:mod:`gdp_graph.prune.hf_config`), so
``save_pretrained`` / ``from_pretrained`` round-trip.

Then the real forward runs on the example inputs and is compared with the gated reference (or
with the output the caller gives). The class's Python code may hold constants the plan breaks (a
hard-coded width, a branch computed in the parent's own ``forward``): then :func:`keep_class`
says why and the caller keeps the GraphModule.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.prune.hf_config import update_config_widths
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.prune.removed_branch import KeepClassError, StandIns, channel_dims_shape, plan_stand_ins
from gdp_graph.prune.verify import VerifyResult, compare_outputs, reference_output, run_for_comparison

#: the buffer of the GraphModule rewrite holding a removed block's constant term (absent: zero)
BLOCK_CONSTANT = "_gdp_constant_block{}"

#: attributes of attention modules that count heads (or heads x head_dim): scaled by the share
#: of head units kept. ``embed_dim``/``hidden_size`` are the residual width and never scaled.
HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_head", "num_key_value_heads", "all_head_size",
                         "split_size", "inner_dim")


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


def keep_class(analysis: Analysis, plan: PruningPlan, pruned: nn.Module, tolerance: float = 1e-4,
               expected: Any = None, *, against_pruned: bool = False) -> KeptClass:
    """Apply ``plan`` to a copy of the traced model's own class, using the tensors of
    ``pruned`` (the GraphModule :func:`~gdp_graph.prune.rewrite.rewrite` made, possibly trained
    since), and verify it against ``expected``: the gated reference's output on the example
    inputs (computed when not given), or with ``against_pruned`` the output of ``pruned``."""
    traced = analysis.traced
    if traced.module is None or traced.inputs is None:
        return KeptClass(None, "the analysis holds no copy of the model's class")
    if getattr(plan, "allow_inexact", False) and not against_pruned:
        return KeptClass(None, "an inexact plan cannot be verified against the gated reference")
    new_tensors = {**dict(pruned.named_parameters()), **dict(pruned.named_buffers())}
    model = copy.deepcopy(traced.module)
    try:
        new_tensors.update(_fold_site_scales(pruned, new_tensors))
        stand_ins = _stand_ins(model, analysis, plan, new_tensors)
    except KeepClassError as exc:
        return KeptClass(None, str(exc))
    except Exception as exc:  # noqa: BLE001 - the class's forward, run to see what its submodules return
        return KeptClass(None, f"the class's forward fails on the example inputs: {_first_line(exc)}")
    changed = _swap_tensors(model, new_tensors)
    for name in sorted(changed):
        _sync_size_attributes(model.get_submodule(name))
    _scale_head_counts(model, analysis, plan)
    stand_ins.apply(model)
    # a config describes every layer alike: it cannot say that a layer lost its attention
    config_updated = False if plan.removed_blocks else update_config_widths(model, analysis, plan)
    try:
        if expected is None:
            expected = reference_output(analysis, plan)
        actual = run_for_comparison(model.eval(), traced.inputs.args, traced.inputs.kwargs)  # float32 if half
        result = compare_outputs(expected, actual, tolerance)
    except Exception as exc:  # noqa: BLE001 - the class's code did not accept the new sizes
        return KeptClass(None, f"the class's forward fails on the pruned sizes: {_first_line(exc)}")
    if not result.ok:
        reference = "the pruned GraphModule" if against_pruned else "the gated reference"
        return KeptClass(None, f"the class's forward differs from {reference} ({result})", result)
    return KeptClass(model, "", result, config_updated, stand_ins.dropped_hooks)


def keep_class_of(analysis: Analysis, plan: PruningPlan, pruned: fx.GraphModule, tolerance: float = 1e-4) -> KeptClass:
    """The class with the tensors of ``pruned`` as they are now (finalized with absorbed gates,
    fine-tuned since), verified against ``pruned`` itself on the example inputs."""
    expected = run_for_comparison(pruned, analysis.traced.example_inputs)
    return keep_class(analysis, plan, pruned, tolerance, expected, against_pruned=True)


def class_or_graph(analysis: Analysis, plan: PruningPlan, pruned: fx.GraphModule, *, wanted: Optional[bool],
                   tolerance: float, expected: Any, own_weights: bool, check: bool) -> nn.Module:
    """What ``rewrite`` returns: the kept class when asked for (``wanted``: rewrite's
    ``keep_class``) or by default where it verifies, else ``pruned`` with
    ``gdp_kept_class_reason`` saying why; a :class:`KeepClassWarning` names what is lost either
    way (the class, hooks)."""
    why_not = _why_not_the_class(analysis, plan, pruned, wanted, own_weights, check)
    if why_not is None:
        kept = keep_class(analysis, plan, pruned, tolerance, expected)
        if kept.model is not None:
            kept.model.gdp_verify = kept.verify
            if kept.dropped_hooks:
                warnings.warn(f"hooks on {', '.join(kept.dropped_hooks)} are dropped: those modules belong to removed "
                              f"residual branches and were replaced by stand-ins", KeepClassWarning, stacklevel=3)
            return kept.model
        pruned.gdp_kept_class_reason = kept.reason
        hooked = _hooks_missing_from(analysis, pruned)
        dropped = f"; hooks on {', '.join(hooked)} are not in the GraphModule" if hooked else ""
        warnings.warn(f"returning a GraphModule, not {type(analysis.traced.module).__name__}: {kept.reason}{dropped}",
                      KeepClassWarning, stacklevel=3)
        return pruned
    pruned.gdp_kept_class_reason = why_not
    hooked = _hooks_missing_from(analysis, pruned)
    if hooked:
        warnings.warn(f"hooks on {', '.join(hooked)} are not in the pruned GraphModule ({why_not}; a rewrite that "
                      f"keeps the class keeps them)", KeepClassWarning, stacklevel=3)
    return pruned


def _why_not_the_class(analysis: Analysis, plan: PruningPlan, pruned: fx.GraphModule, wanted: Optional[bool],
                       own_weights: bool, check: bool) -> Optional[str]:
    """Why the class is not tried (None: try it)."""
    if wanted is False:
        return "keep_class=False asked for the GraphModule"
    if own_weights:
        return "weights or site scales were given: the caller verifies the GraphModule"
    if wanted:
        return None
    if analysis.traced.module is None or analysis.traced.inputs is None:
        return "the analysis holds no copy of the model's class"
    if plan.allow_inexact:
        return "an inexact plan cannot be verified against the gated reference"
    if not check:
        return "check=False: nothing verifies the class's forward"
    if pruned.gdp_verify is None or not pruned.gdp_verify.ok:
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
        if node.op != "get_attr" or not str(node.target).startswith("_gdp_scale"):
            continue
        scale = tensors[str(node.target)]
        muls = list(node.users)
        layer = next(iter(muls[0].users)) if len(muls) == 1 and len(muls[0].users) == 1 else None
        weight = None
        if layer is not None and layer.args and layer.args[0] is muls[0]:
            if layer.op == "call_function" and layer.target in _LINEAR and getattr(layer.args[1], "op", "") == "get_attr":
                weight = str(layer.args[1].target)
            elif layer.op == "call_module" and isinstance(pruned.get_submodule(str(layer.target)), nn.Linear):
                weight = f"{layer.target}.weight"
        if weight is None or scale.reshape(-1).shape[0] != scale.shape[-1]:
            raise KeepClassError(f"the gate scale '{node.target}' that finalize kept feeds no linear layer to fold it "
                                 f"into; the class has no place for the multiplication")
        folded[weight] = folded.get(weight, tensors[weight]).detach() * scale.reshape(1, -1)
    return folded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _stand_ins(model: nn.Module, analysis: Analysis, plan: PruningPlan, tensors: dict[str, torch.Tensor]) -> StandIns:
    """The stand-ins of the removed branches, with the constant terms the GraphModule adds."""
    if not plan.removed_blocks:
        return StandIns()
    keep = plan.element_keep(analysis)
    constants = {}
    for bid in sorted(plan.removed_blocks):
        constant = tensors.get(BLOCK_CONSTANT.format(bid))
        # a zero constant in the dtype the block adds (a bfloat16 model's stand-ins stay bfloat16)
        added = analysis.traced.values.get(analysis.blocks[bid].add_node)
        dtype = added.dtype if isinstance(added, torch.Tensor) else None
        constants[bid] = constant if constant is not None else \
            torch.zeros(channel_dims_shape(analysis, analysis.blocks[bid], keep), dtype=dtype)
    return plan_stand_ins(model, analysis, sorted(plan.removed_blocks), constants)


def _swap_tensors(model: nn.Module, new_tensors: dict[str, torch.Tensor]) -> set[str]:
    """Put every parameter/buffer of ``new_tensors`` that differs (shrunk, or trained since the
    analysis) in place; return the owners' names."""
    changed: set[str] = set()
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
        changed.add(owner_name)
    return changed


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def _sync_size_attributes(m: nn.Module) -> None:
    """Size attributes of a layer from its (shrunk) tensors."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = w.shape
    elif isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        per_group_out = m.out_channels // m.groups
        groups = max(1, w.shape[0] // per_group_out) if m.groups > 1 else 1
        m.out_channels, m.groups, m.in_channels = w.shape[0], groups, w.shape[1] * groups
    elif isinstance(m, nn.modules.conv._ConvNd):  # transposed: weight [in, out / groups, ...]
        per_group_in = m.in_channels // m.groups
        groups = max(1, w.shape[0] // per_group_in) if m.groups > 1 else 1
        m.in_channels, m.groups, m.out_channels = w.shape[0], groups, w.shape[1] * groups
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        m.num_features = (w if w is not None else m.running_mean).shape[0]
    elif isinstance(m, nn.GroupNorm):
        per = m.num_channels // m.num_groups
        m.num_channels = w.shape[0]
        m.num_groups = m.num_channels // per
    elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and w is not None:
        m.normalized_shape = (w.shape[0],)
    elif isinstance(m, nn.Embedding):
        m.num_embeddings, m.embedding_dim = w.shape
    elif type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # Hugging Face GPT-2: x @ W + b
        m.nx, m.nf = w.shape


def _owner_of(modules: list[str]) -> Optional[str]:
    """The deepest module containing every one of ``modules`` (the attention block of a head
    group's projections)."""
    if not modules:
        return None
    return ".".join(os.path.commonprefix([m.split(".") for m in modules]))


def _scale_head_counts(model: nn.Module, analysis: Analysis, plan: PruningPlan) -> None:
    for gid, kept in plan.keep.items():
        group = analysis.groups[gid]
        if group.unit != "head" or len(kept) == group.size:
            continue
        owner = _owner_of(group.modules)
        if owner is None:
            continue
        module = model.get_submodule(owner)
        for attr in HEAD_COUNT_ATTRIBUTES:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value % group.size == 0:
                setattr(module, attr, value * len(kept) // group.size)
