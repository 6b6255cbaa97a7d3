"""The Hugging Face config of a pruned model, computed from the analysis and the plan.

One function answers "what does the pruned model's ``config.json`` say":
:func:`pruned_hf_config` returns the new config and the state-dict key renames. The kept-class
rewrite (sizes of the model in memory), the ``save_pretrained`` folder
(:mod:`gdp_graph.prune.hf_save`) and a streaming checkpoint writer all call it, so the sizes are
decided in one place.

What it decides, per decoder layer (the ``nn.ModuleList`` whose length is the config's
``num_hidden_layers``):

* heads: a head group's units are key/value heads (with their query heads under grouped-query
  attention) or plain heads; ``num_attention_heads`` and ``num_key_value_heads`` scale by the
  share kept, and ``head_dim`` is written out (it no longer equals ``hidden_size / heads``);
* MLP width (``intermediate_size`` / ``n_inner`` / ``ffn_dim``): the kept channels of the group
  of that original width;
* hidden size: the kept channels of the residual-stream group (an inexact plan, norms sliced);
* whole layers: a layer whose every parameterised module lies in removed blocks goes;
  ``num_hidden_layers`` shrinks, the kept layers are renumbered (``model.layers.7.`` ->
  ``model.layers.5.``) and ``layer_types`` follows.

Every kept layer alike ("uniform"): the config is a plain config of the model's own class. Not
alike: the config keeps the largest sizes and lists each kept layer's sizes under
``gdp_layers``; such a folder loads through the modeling code that
:mod:`gdp_graph.prune.hf_save` writes beside it (``auto_map``, ``trust_remote_code=True``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from gdp_graph.errors import GdpError
from gdp_graph.graph.analysis import Analysis
from gdp_graph.prune.plan import PruningPlan

__all__ = ["HfConfigError", "LayerSizes", "PrunedSizes", "pruned_hf_config", "pruned_sizes", "rename_key",
           "update_config_widths", "MLP_ATTRIBUTES"]

#: config attributes of the MLP width, in the order they are looked for (GPT-2: n_inner)
MLP_ATTRIBUTES = ("intermediate_size", "n_inner", "ffn_dim")


class HfConfigError(GdpError, ValueError):
    """The plan cannot be written as a Hugging Face config (the message says why)."""


@dataclass(frozen=True)
class LayerSizes:
    """The kept sizes of one decoder layer (None: the config has no such attribute)."""

    heads: Optional[int]
    kv_heads: Optional[int]
    mlp: Optional[int]

    def as_config(self) -> dict[str, int]:
        names = {"num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "mlp": self.mlp}
        return {k: v for k, v in names.items() if v is not None}


@dataclass(frozen=True)
class PrunedSizes:
    """What :func:`pruned_sizes` found: the layer list, the kept layers' sizes by original index,
    the removed layers, the kept hidden size and head_dim."""

    layer_prefix: Optional[str]  #: "model.layers" (None: no layer list found)
    layers: dict[int, LayerSizes] = field(default_factory=dict)
    removed_layers: tuple[int, ...] = ()
    hidden: Optional[int] = None
    head_dim: Optional[int] = None
    mlp_attribute: Optional[str] = None

    @property
    def uniform(self) -> bool:
        return len(set(self.layers.values())) <= 1


def _get(config: Any, name: str) -> Any:
    value = getattr(config, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mlp_attribute(config: Any) -> tuple[Optional[str], Optional[int]]:
    for attr in MLP_ATTRIBUTES:
        value = _get(config, attr)
        if attr == "n_inner" and value is None and _get(config, "n_embd") is not None:
            value = 4 * config.n_embd  # GPT-2's default
        if value is not None:
            return attr, value
    return None, None


def layer_list(model: nn.Module, count: Optional[int]) -> Optional[str]:
    """The qualified name of the ``ModuleList`` holding ``count`` layers (the decoder layers)."""
    if count is None:
        return None
    lists = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    return min(lists, key=lambda n: n.count("."), default=None)


def _layer_of(module: str, prefix: str) -> Optional[int]:
    if not module.startswith(prefix + "."):
        return None
    head = module[len(prefix) + 1:].split(".")[0]
    return int(head) if head.isdigit() else None


def _removed_layers(model: nn.Module, analysis: Analysis, plan: PruningPlan, prefix: str, count: int) -> list[int]:
    """Layers whose every parameterised module lies in a removed block."""
    gone = {m for b in plan.removed_blocks for m in analysis.blocks[b].modules}
    removed = []
    for i in range(count):
        owners = {n.rpartition(".")[0] for n, _ in model.get_submodule(f"{prefix}.{i}").named_parameters()}
        owners = {f"{prefix}.{i}.{o}" if o else f"{prefix}.{i}" for o in owners}
        if owners and all(any(o == g or o.startswith(g + ".") for g in gone) for o in owners):
            removed.append(i)
    return removed


def pruned_sizes(config: Any, analysis: Analysis, plan: PruningPlan) -> PrunedSizes:
    """The kept sizes of every decoder layer under ``plan`` (see the module docstring)."""
    model = analysis.traced.module
    count = _get(config, "num_hidden_layers")
    prefix = layer_list(model, count) if model is not None else None
    heads, kv_heads = _get(config, "num_attention_heads"), _get(config, "num_key_value_heads")
    hidden = _get(config, "hidden_size")
    mlp_attr, mlp = _mlp_attribute(config)
    head_dim = _get(config, "head_dim") or (hidden // heads if hidden and heads else None)
    kept_hidden = None
    for g in analysis.groups:
        if g.size == hidden and "residual" in g.couplings and g.id in plan.keep:
            kept_hidden = len(plan.keep[g.id])
    if prefix is None:
        return PrunedSizes(None, hidden=kept_hidden, head_dim=head_dim, mlp_attribute=mlp_attr)
    removed = _removed_layers(model, analysis, plan, prefix, count)
    per_layer: dict[int, dict[str, int]] = {i: {} for i in range(count) if i not in removed}
    for g in analysis.groups:
        layers = {_layer_of(m, prefix) for m in g.modules}
        if len(layers) != 1 or None in layers or g.id not in plan.keep:
            continue
        (i,) = layers
        share = (len(plan.keep[g.id]), g.size)
        if i in per_layer and g.unit == "head" and heads:
            per_layer[i]["share"] = share
        elif i in per_layer and g.unit == "channel" and g.size == mlp:
            per_layer[i]["mlp"] = share[0]
    layers = {}
    for i, found in per_layer.items():
        kept, size = found.get("share", (1, 1))
        layers[i] = LayerSizes(heads * kept // size if heads else None,
                               kv_heads * kept // size if kv_heads else None, found.get("mlp", mlp))
    return PrunedSizes(prefix, layers, tuple(removed), kept_hidden, head_dim, mlp_attr)


def rename_key(name: str, renames: dict[str, Optional[str]]) -> Optional[str]:
    """``name`` under ``renames`` (prefix -> new prefix, or None: the key is dropped)."""
    for old, new in renames.items():
        if name.startswith(old):
            return None if new is None else new + name[len(old):]
    return name


def _apply_sizes(config: Any, sizes: PrunedSizes, layers: list[LayerSizes]) -> None:
    """Write the sizes into ``config`` (the largest per attribute where layers differ)."""
    before = (_get(config, "hidden_size"), _get(config, "num_attention_heads"))
    if sizes.hidden is not None:
        config.hidden_size = sizes.hidden
    for attr, pick in (("num_attention_heads", lambda s: s.heads), ("num_key_value_heads", lambda s: s.kv_heads)):
        values = [pick(s) for s in layers if pick(s) is not None]
        if values:
            setattr(config, attr, max(values))
    mlp = [s.mlp for s in layers if s.mlp is not None]
    if mlp and sizes.mlp_attribute:
        setattr(config, sizes.mlp_attribute, max(mlp))
    after = (_get(config, "hidden_size"), _get(config, "num_attention_heads"))
    if sizes.head_dim is not None and after != before:
        config.head_dim = sizes.head_dim  # no longer hidden_size / heads


def pruned_hf_config(config: Any, analysis: Analysis, plan: PruningPlan) -> tuple[Any, dict[str, Optional[str]]]:
    """The pruned model's config and the state-dict key renames.

    Args:
        config: the original model's ``PretrainedConfig`` (not modified; a copy is returned).
        analysis: the analysis the plan was made on (``analysis.traced.module`` gives the layer
            list: the ``nn.ModuleList`` of ``num_hidden_layers`` layers).
        plan: the pruning plan.

    Returns:
        ``(new_config, renames)``. ``new_config`` has the kept sizes (see the module docstring):
        uniform layers give a plain config; layers that differ give the largest sizes plus
        ``gdp_layers``, one ``{"num_attention_heads", "num_key_value_heads", "mlp"}`` dict per
        kept layer in the new order. ``renames`` maps a key prefix to its new prefix
        (``"model.layers.7." -> "model.layers.5."``) or to None for the keys of removed layers;
        apply it with :func:`rename_key`. Keys of kept layers that keep their index are absent.

    Raises:
        HfConfigError: every layer removed.
    """
    sizes = pruned_sizes(config, analysis, plan)
    new = copy.deepcopy(config)
    renames: dict[str, Optional[str]] = {}
    kept = sorted(sizes.layers)
    if sizes.layer_prefix is not None:
        if not kept:
            raise HfConfigError("the plan removes every decoder layer: no config describes that")
        for i in sizes.removed_layers:
            renames[f"{sizes.layer_prefix}.{i}."] = None
        for new_index, i in enumerate(kept):
            if new_index != i:
                renames[f"{sizes.layer_prefix}.{i}."] = f"{sizes.layer_prefix}.{new_index}."
        new.num_hidden_layers = len(kept)
        if isinstance(getattr(new, "layer_types", None), list):
            new.layer_types = [new.layer_types[i] for i in kept]
    per_layer = [sizes.layers[i] for i in kept]
    _apply_sizes(new, sizes, per_layer)
    if not sizes.uniform:
        new.gdp_layers = [s.as_config() for s in per_layer]
    return new, renames


def update_config_widths(model: nn.Module, analysis: Analysis, plan: PruningPlan) -> bool:
    """Give the in-memory kept-class model's config the pruned widths when every layer keeps the
    same (its layers stay in place: removed ones are stand-ins). Returns whether it changed."""
    config = getattr(model, "config", None)
    if config is None or not plan.keep:
        return False
    sizes = pruned_sizes(config, analysis, plan)
    if not sizes.uniform:
        return False
    candidate = copy.deepcopy(config)
    _apply_sizes(candidate, sizes, list(sizes.layers.values()))
    if candidate.to_dict() == config.to_dict() or not builds_shapes(type(model), candidate, shapes_of(model)):
        return False  # e.g. a class that derives head_dim from hidden_size / heads
    for key, value in candidate.to_dict().items():
        if getattr(config, key, None) != value:
            setattr(config, key, value)
    return True


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter and persistent-buffer shapes by state-dict key."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def builds_shapes(cls: type, config: Any, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether ``cls(config)`` has exactly these state-dict shapes (built on the meta device)."""
    try:
        with torch.device("meta"):
            built = cls(copy.deepcopy(config))
    except Exception:  # noqa: BLE001 - a config the class refuses cannot describe the model
        return False
    return shapes_of(built) == shapes
