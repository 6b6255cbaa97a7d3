"""The attribute changes of a slice map that no single layer's rule knows: attention modules'
head counts."""

from __future__ import annotations

import os
from typing import Optional

from gdp_graph.graph.analysis import Analysis
from gdp_graph.prune.plan import PruningPlan

#: attributes of attention modules that count heads (or heads x head_dim): scaled by the share
#: of head units kept. ``embed_dim``/``hidden_size`` are the residual width and never scaled.
HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_key_value_heads",
                         "all_head_size", "split_size", "inner_dim")


def _owner_of(modules: list[str]) -> Optional[str]:
    """The deepest module containing every one of ``modules`` (the attention block of a head
    group's projections)."""
    if not modules:
        return None
    return ".".join(os.path.commonprefix([m.split(".") for m in modules]))


def _owners(model, modules: list[str]) -> list[str]:
    """The attention modules of a head group: the deepest module holding all its projections,
    or where that counts no heads (T5's relative position bias, computed in the first layer and
    added in every layer, ties the heads of all layers into one group) the nearest module above
    each projection that does."""
    common = _owner_of(modules)
    if common is None or _counts_heads(model.get_submodule(common)):
        return [common] if common is not None else []
    found = []
    for name in modules:
        parts = name.split(".")
        above = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)
                      if _counts_heads(model.get_submodule(".".join(parts[:i])))), None)
        if above is not None and above not in found:
            found.append(above)
    return found or [common]


def _counts_heads(module) -> bool:
    return any(isinstance(getattr(module, a, None), int) for a in HEAD_COUNT_ATTRIBUTES)


def head_count_changes(analysis: Analysis, plan: PruningPlan) -> dict[str, dict[str, int]]:
    """``{attention module: {head-count attribute: new value}}`` for every head group the plan
    shrinks (groups sharing an owner scale its counts one after the other)."""
    model = analysis.traced.module
    changes: dict[str, dict[str, int]] = {}
    if model is None:
        return changes
    for gid, kept in plan.keep.items():
        group = analysis.groups[gid]
        if group.unit != "head" or len(kept) == group.size:
            continue
        for owner in _owners(model, group.modules):
            module = model.get_submodule(owner)
            done = changes.setdefault(owner, {})
            for attr in HEAD_COUNT_ATTRIBUTES:
                value = done.get(attr, getattr(module, attr, None))
                if isinstance(value, int) and not isinstance(value, bool) and value % group.size == 0:
                    done[attr] = value * len(kept) // group.size
    return {owner: done for owner, done in changes.items() if done}
