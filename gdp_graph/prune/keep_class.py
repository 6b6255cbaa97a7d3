"""A pruned model that keeps the user's class: ``LlamaForCausalLM`` stays ``LlamaForCausalLM``.

The plan is applied to a deep copy of the traced model (its own class, code, hooks and, for a
Hugging Face model, its config and ``generate``): every parameter and buffer the GraphModule
rewrite shrank is swapped in under the same qualified name, the size attributes of the layers
that hold them follow (``in_features``, ``out_channels``, ``num_features``,
``normalized_shape``, ...), and attention modules' head counts are scaled by the share of heads
kept (``num_heads``, ``num_key_value_heads``, ``all_head_size``, ``split_size``, ...). The
Hugging Face config is updated where the result is uniform (every layer keeps the same heads and
MLP width), so ``save_pretrained`` / ``from_pretrained`` round-trip.

Then the real forward runs on the example inputs and is compared with the gated reference. The
class's Python code may hold constants the plan breaks (a hard-coded width, a removed residual
block that its ``forward`` still calls): then :func:`keep_class` says why and the caller keeps the
GraphModule.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.prune.verify import VerifyResult, compare_outputs, gated_reference

#: attributes of attention modules that count heads (or heads x head_dim): scaled by the share
#: of head units kept. ``embed_dim``/``hidden_size`` are the residual width and never scaled.
HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_head", "num_key_value_heads", "all_head_size",
                         "split_size", "inner_dim")


@dataclass
class KeptClass:
    """The result of :func:`keep_class`: the model (None when the class could not be kept),
    why not, and its verification."""

    model: Optional[nn.Module]
    reason: str
    verify: Optional[VerifyResult] = None
    config_updated: bool = False


def keep_class(analysis: Analysis, plan: PruningPlan, pruned: nn.Module, tolerance: float = 1e-4) -> KeptClass:
    """Apply ``plan`` to a copy of the traced model's own class, using the tensors of
    ``pruned`` (the GraphModule :func:`~gdp_graph.prune.rewrite.rewrite` made), and verify it."""
    traced = analysis.traced
    if traced.module is None or traced.inputs is None:
        return KeptClass(None, "the analysis holds no copy of the model's class")
    if plan.removed_blocks:
        names = ", ".join(analysis.blocks[b].name for b in sorted(plan.removed_blocks))
        return KeptClass(None, f"the plan removes blocks ({names}) that the class's forward still calls")
    if getattr(plan, "allow_inexact", False):
        return KeptClass(None, "an inexact plan cannot be verified against the gated reference")
    model = copy.deepcopy(traced.module)
    new_tensors = {**dict(pruned.named_parameters()), **dict(pruned.named_buffers())}
    changed = _swap_tensors(model, new_tensors)
    for name in sorted(changed):
        _sync_size_attributes(model.get_submodule(name))
    _scale_head_counts(model, analysis, plan)
    config_updated = _update_config(model, analysis, plan)
    try:
        with torch.no_grad():
            actual = traced.inputs.call(model.eval())
            expected = gated_reference(analysis, plan).eval()(*traced.example_inputs)
        result = compare_outputs(expected, actual, tolerance)
    except Exception as exc:  # noqa: BLE001 - the class's code did not accept the new sizes
        text = str(exc).strip().splitlines()
        return KeptClass(None, f"the class's forward fails on the pruned sizes: {type(exc).__name__}: {text[0] if text else ''}")
    if not result.ok:
        return KeptClass(None, f"the class's forward differs from the gated reference ({result})", result)
    return KeptClass(model, "", result, config_updated)


def _swap_tensors(model: nn.Module, new_tensors: dict[str, torch.Tensor]) -> set[str]:
    """Put every shrunk parameter/buffer of ``new_tensors`` in place; return the owners' names."""
    changed: set[str] = set()
    for name, old in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        new = new_tensors.get(name)
        if new is None or new.shape == old.shape:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if isinstance(old, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(new.detach().clone(), requires_grad=old.requires_grad))
        else:
            owner._buffers[leaf] = new.detach().clone()
        changed.add(owner_name)
    return changed


def _sync_size_attributes(m: nn.Module) -> None:
    """Size attributes of a layer from its (shrunk) tensors."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = w.shape
    elif isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        per_group_out = m.out_channels // m.groups
        groups = max(1, w.shape[0] // per_group_out) if m.groups > 1 else 1
        m.out_channels, m.groups, m.in_channels = w.shape[0], groups, w.shape[1] * groups
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


def _update_config(model: nn.Module, analysis: Analysis, plan: PruningPlan) -> bool:
    """A Hugging Face config that describes every layer alike gets the new sizes."""
    config = getattr(model, "config", None)
    if config is None or not plan.keep:
        return False
    heads = {(g.size, len(k)) for gid, k in plan.keep.items() if (g := analysis.groups[gid]).unit == "head"}
    head_groups = [g for g in analysis.groups if g.unit == "head"]
    updates: dict[str, int] = {}
    if heads:
        if len(heads) != 1 or len([gid for gid in plan.keep if analysis.groups[gid].unit == "head"]) != len(head_groups):
            return False  # layers keep different head counts: no single config describes them
        (units, kept), = heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        for attr in ("num_attention_heads", "num_key_value_heads", "n_head"):
            if isinstance(getattr(config, attr, None), int):
                updates[attr] = getattr(config, attr) * kept // units
        if "num_attention_heads" in updates and updates["num_attention_heads"] * head_dim != config.hidden_size:
            if not hasattr(config, "head_dim"):
                return False  # the config derives head_dim from hidden_size / heads: cannot express it
            updates["head_dim"] = head_dim
    width = _uniform_mlp_width(config, analysis, plan)
    if width is False:
        return False
    if width is not None:
        updates.update(width)
    for key, value in updates.items():
        setattr(config, key, value)
    return bool(updates)


def _uniform_mlp_width(config: Any, analysis: Analysis, plan: PruningPlan):
    """``{attribute: kept width}`` when every MLP group keeps the same width, None when none is
    pruned, False when they differ."""
    for attr in ("intermediate_size", "n_inner", "ffn_dim"):
        original = getattr(config, attr, None)
        if attr == "n_inner" and original is None and hasattr(config, "n_embd"):
            original = 4 * config.n_embd  # GPT-2's default
        if not isinstance(original, int):
            continue
        groups = [g for g in analysis.groups if g.unit == "channel" and g.size == original and g.prunable]
        kept = {len(plan.keep.get(g.id, range(g.size))) for g in groups}
        if not groups or kept == {original}:
            return None
        return {attr: kept.pop()} if len(kept) == 1 else False
    return None
