"""A plan compiled to one slice map: what every tensor of the model keeps, and what else changes.

:func:`slice_map` walks the analysed graph once. Each module call asks its rule's ``resize``
hook which indices of the module's tensors survive (:class:`~gdp_graph.graph.rules.Resize`; a
user's rule reaches it through the default, which reads the members its ``propagate``
recorded), each ``get_attr`` tensor is sliced along its tracked dims, and the rules' ``sizes``
hooks give the modules' new size attributes. The result is an immutable :class:`SliceMap`, keyed
by the qualified names of the ORIGINAL model's ``state_dict`` (tied aliases included). Its
consumers are the GraphModule rewrite (:mod:`gdp_graph.prune.rewrite`), the rewrite that keeps
the model's class (:mod:`gdp_graph.prune.keep_class`) and a checkpoint writer that never holds the
whole model in memory::

    smap = slice_map(analysis, plan)
    with safe_open("model.safetensors", framework="pt") as f:
        for name in f.keys():
            if smap.keeps(name):
                out[name] = smap.apply_to_tensor(name, f.get_tensor(name))

The Hugging Face config of the result is :func:`gdp_graph.prune.hf_config.pruned_hf_config`'s.
A name the map does not mention is kept unchanged; ``apply_to_tensor`` checks the tensor has its
original shape, so applying a map twice fails loudly.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from gdp_graph.errors import GdpError
from gdp_graph.graph import rules
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.blocks import branch_constant
from gdp_graph.graph.channels import Chan
from gdp_graph.graph.parametrized import computed_tensors, original_slices
from gdp_graph.graph.rules.registry import Slices, copy_to_resize
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.prune.resize_context import ResizeContext, chan_slices, members_by_node
from gdp_graph.prune.slice_attributes import head_count_changes


class RewriteError(GdpError, RuntimeError):
    """The plan could not be applied at some node (the message names it)."""


@dataclass(frozen=True)
class RemovedBranch:
    """A removed residual block ``y = x + f(x)`` that becomes ``y = x + constant``."""

    block: int
    name: str  #: the block's module prefix (``layer1.0``)
    shape: tuple[int, ...]  #: the constant's shape: kept counts on the channel dims, 1 elsewhere
    constant: Optional[torch.Tensor] = None  #: sliced to the kept channels; None: zero


@dataclass(frozen=True)
class SliceMap:
    """What a plan does to a model's tensors and attributes, by the original model's names.

    Attributes:
        entries: tensor name -> ``((dim, kept indices), ...)``, applied in order with
            ``index_select``; only tensors that lose something.
        shapes: the original shape of every tensor in ``entries``.
        dropped: tensors only removed branches use: absent from the pruned model.
        attribute_changes: module name -> ``{attribute: new value}`` (``in_features``,
            ``num_heads``): what a model of the original class must set.
        removed_branches: block id -> :class:`RemovedBranch`.
    """

    entries: Mapping[str, tuple[tuple[int, torch.Tensor], ...]] = field(default_factory=dict)
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dropped: frozenset[str] = frozenset()
    attribute_changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    removed_branches: Mapping[int, RemovedBranch] = field(default_factory=dict)

    def keeps(self, name: str) -> bool:
        """Whether the pruned model has a tensor ``name`` (False for a removed branch's)."""
        return name not in self.dropped

    def new_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape tensor ``name`` of original shape ``shape`` has after the plan."""
        out = list(shape)
        for dim, index in self.entries.get(name, ()):
            out[dim] = int(index.numel())
        return tuple(out)

    def apply_to_tensor(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (the original model's ``name``, any dtype or device) with only the kept
        indices; the tensor itself where the plan leaves it whole.

        Raises:
            RewriteError: ``name`` is dropped, or ``tensor`` does not have its original shape.
        """
        if name in self.dropped:
            raise RewriteError(f"tensor '{name}' belongs to a removed branch: the pruned model has none")
        pairs = self.entries.get(name)
        if not pairs:
            return tensor
        expected = self.shapes.get(name)
        if expected is not None and tuple(tensor.shape) != tuple(expected):
            raise RewriteError(f"tensor '{name}' has shape {tuple(tensor.shape)}, the plan was made for {expected}")
        out = tensor.detach()
        for dim, index in pairs:
            out = out.index_select(dim, index.to(out.device))  # copies: never the source's storage
        return out

    def apply_to_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every kept tensor of ``state`` sliced (dropped ones left out)."""
        return {name: self.apply_to_tensor(name, t) for name, t in state.items() if self.keeps(name)}

    def apply_to_module(self, name: str, module: nn.Module) -> nn.Module:
        """A resized copy of the original model's submodule ``name`` (its own tensors sliced, its
        attributes changed), or ``module`` itself when nothing of it changes."""
        prefix = f"{name}." if name else ""
        local = self._by_owner.get(name, ())
        attributes = self.attribute_changes.get(name, {})
        if not local and all(getattr(module, k, None) == v for k, v in attributes.items()):
            return module
        new = copy_to_resize(module, [n[len(prefix):] for n in local])
        for full in local:
            path, _, leaf = full[len(prefix):].rpartition(".")  # path: a parametrization's originals
            old = getattr(module.get_submodule(path), leaf)
            sliced = self.apply_to_tensor(full, old)
            if isinstance(old, nn.Parameter):
                setattr(new.get_submodule(path), leaf, nn.Parameter(sliced, requires_grad=old.requires_grad))
            else:
                setattr(new.get_submodule(path), leaf, sliced)  # a registered buffer stays a buffer
        for key, value in attributes.items():
            setattr(new, key, value)
        return new

    @functools.cached_property
    def _by_owner(self) -> dict[str, list[str]]:
        """The names in ``entries`` by the module that owns the tensor."""
        owners: dict[str, list[str]] = {}
        for name in self.entries:
            owner = name.rpartition(".")[0]
            head, apart, _ = f".{owner}".partition(".parametrizations.")  # weight_norm's originals:
            owners.setdefault(head[1:] if apart else owner, []).append(name)  # the parametrized module's
        return owners

    # -- serialization --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-ready dict (indices and constants as lists)."""
        return {"entries": {n: [[d, i.tolist()] for d, i in pairs] for n, pairs in self.entries.items()},
                "shapes": {n: list(s) for n, s in self.shapes.items()}, "dropped": sorted(self.dropped),
                "attribute_changes": {m: dict(a) for m, a in self.attribute_changes.items()},
                "removed_branches": {str(b): {"name": r.name, "shape": list(r.shape),
                                              "constant": None if r.constant is None else r.constant.tolist(),
                                              "dtype": None if r.constant is None else str(r.constant.dtype)[6:]}
                                     for b, r in self.removed_branches.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SliceMap":
        def value(v: Any) -> Any:  # JSON has no tuples: normalized_shape comes back as a list
            return tuple(v) if isinstance(v, list) else v

        branches = {int(b): RemovedBranch(int(b), r["name"], tuple(r["shape"]), None if r["constant"] is None else
                                          torch.tensor(r["constant"], dtype=getattr(torch, r["dtype"])))
                    for b, r in data.get("removed_branches", {}).items()}
        return cls({n: tuple((int(d), torch.tensor(i, dtype=torch.long)) for d, i in pairs)
                    for n, pairs in data.get("entries", {}).items()},
                   {n: tuple(s) for n, s in data.get("shapes", {}).items()}, frozenset(data.get("dropped", ())),
                   {m: {k: value(v) for k, v in a.items()} for m, a in data.get("attribute_changes", {}).items()},
                   branches)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "SliceMap":
        return cls.from_dict(json.loads(Path(path).read_text()))


def slice_map(analysis: Analysis, plan: PruningPlan, *, weights: Optional[nn.Module] = None,
              constants: bool = True) -> SliceMap:
    """Compile ``plan`` (validated here) to the :class:`SliceMap` of the analysed model.

    Args:
        weights: a module with the traced graph's structure whose tensors the removed branches'
            constants are computed from (e.g. with gates absorbed); defaults to the traced one.
            The kept indices do not depend on it.
        constants: False leaves the removed branches' constants out (None), for a caller that
            has them already (each costs a run of its branch).

    Raises:
        PlanError: the plan does not fit the analysis.
        RewriteError: a rule's ``resize`` hook or a removed block's constant failed (named).
    """
    plan.validate(analysis)
    keep = plan.element_keep(analysis)
    source = weights if weights is not None else analysis.traced.gm
    dead = {n for b in plan.removed_blocks for n in analysis.blocks[b].nodes}
    entries: dict[str, tuple[tuple[int, torch.Tensor], ...]] = {}
    attributes: dict[str, dict[str, Any]] = {}
    _node_slices(analysis, keep, source, dead, entries, attributes)
    entries = _with_aliases(analysis, entries)  # before the sizes: a tied embedding's module is sized too
    _traced_through_sizes(analysis, source, entries, attributes)
    for owner, changes in head_count_changes(analysis, plan).items():
        attributes.setdefault(owner, {}).update(changes)
    tensors = _named_tensors(analysis, source)
    shapes = {n: tuple(tensors[n].shape) for n in entries if n in tensors}
    return SliceMap(entries, shapes, _dropped(analysis, source, dead), attributes,
                    _removed_branches(analysis, plan, keep, source, dead, constants))


def _node_slices(analysis: Analysis, keep: torch.Tensor, source: nn.Module, dead: set[str],
                 entries: dict, attributes: dict) -> None:
    """What each live module call's ``resize`` hook and each ``get_attr`` tensor keeps."""
    values = analysis.traced.values
    modules = dict(source.named_modules())
    members = members_by_node(analysis.store.members)
    for node in analysis.traced.gm.graph.nodes:
        if node.name in dead:
            continue
        if node.op == "get_attr" and isinstance(values.get(node.name), torch.Tensor):
            pairs = chan_slices(node.meta.get("channels"), keep)
            if pairs:
                entries[str(node.target)] = pairs
            continue
        module = modules.get(node.target) if node.op == "call_module" else None
        rule = rules.lookup(module) if module is not None else None
        if rule is None:
            continue
        try:
            resize = rule.resize(module, ResizeContext(node, node.args, node.kwargs, analysis, keep,
                                                       members.get(node.name, ())))
            _record(node.target, module, resize, rule, entries, attributes)
        except Exception as exc:  # noqa: BLE001 - re-raised with the node named
            raise RewriteError(f"cannot resize node '{node.name}' ({node.format_node()}): "
                               f"{type(exc).__name__}: {exc}") from exc


def _record(name: str, module: nn.Module, resize: rules.Resize, rule: rules.OpRule, entries: dict,
            attributes: dict) -> None:
    prefix = f"{name}." if name else ""
    slices: Slices = resize.slices
    for leaf, pairs in slices.items():
        entries[prefix + leaf] = tuple((int(d) % getattr(module, leaf).dim(), i.to(torch.long)) for d, i in pairs)
    if not slices and not resize.attributes:
        return
    changes = rule.sizes(module, _new_shapes(module, prefix, entries))
    for leaf in slices:  # a computed weight (weight_norm): what it is computed from is sliced
        originals = original_slices(module, leaf, entries[prefix + leaf])
        if originals:
            del entries[prefix + leaf]
            entries.update({prefix + name: pairs for name, pairs in originals.items()})
    changes.update(resize.attributes)
    attributes.setdefault(name, {}).update(changes)


def _new_shapes(module: nn.Module, prefix: str, entries: Mapping) -> dict[str, torch.Size]:
    shapes = {}
    for leaf, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False),
                    *computed_tensors(module)]:
        shape = list(t.shape)
        for dim, index in entries.get(prefix + leaf, ()):
            shape[dim] = int(index.numel())
        shapes[leaf] = torch.Size(shape)
    return shapes


def _traced_through_sizes(analysis: Analysis, source: nn.Module, entries: dict, attributes: dict) -> None:
    """Size attributes of the modules of the class whose tensors ``get_attr`` nodes slice (every
    layer with torch.export, a Hugging Face Conv1D with fx): their rule's or registered
    ``sizes`` hook, given the new shapes."""
    model = analysis.traced.module if analysis.traced.module is not None else source
    owners = {n.rpartition(".")[0] for n in entries} - set(attributes)
    for owner in sorted(owners):
        try:
            module = model.get_submodule(owner)
        except AttributeError:
            continue
        sizes = rules.sizes_of(module)
        if sizes is not None:
            changes = sizes(module, _new_shapes(module, f"{owner}." if owner else "", entries))
            if changes:
                attributes[owner] = changes


def _named_tensors(analysis: Analysis, source: nn.Module) -> dict[str, torch.Tensor]:
    found = {}
    for model in (source, analysis.traced.module):
        if model is not None:
            found.update(model.named_parameters(remove_duplicate=False))
            found.update(model.named_buffers(remove_duplicate=False))
    return found


def _with_aliases(analysis: Analysis, entries: dict) -> dict:
    """``entries`` with each tied tensor's other names (GPT-2's ``lm_head.weight``) too."""
    model = analysis.traced.module
    if model is None:
        return entries
    names: dict[int, list[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(name)
    out = dict(entries)
    for aliases in names.values():
        known = next((entries[n] for n in aliases if n in entries), None)
        if known is not None:
            out.update({n: out.get(n, known) for n in aliases})
    return out


def _dropped(analysis: Analysis, source: nn.Module, dead: set[str]) -> frozenset[str]:
    """Tensors of removed branches: those no live node reads that only dead nodes read or that
    belong to a module only dead nodes run in (a BatchNorm's ``num_batches_tracked``), with
    their tied aliases."""
    read: dict[bool, set[str]] = {True: set(), False: set()}
    ran: dict[bool, set[str]] = {True: set(), False: set()}
    modules = dict(source.named_modules())
    for node in analysis.traced.gm.graph.nodes:
        is_dead = node.name in dead
        if node.op == "get_attr" and node.users:  # torch.export lists a BatchNorm's unread num_batches_tracked
            read[is_dead].add(str(node.target))
        elif node.op == "call_module" and node.target in modules:
            ran[is_dead].add(str(node.target))
            read[is_dead].update(_tensor_names(modules[node.target], f"{node.target}."))
        ran[is_dead].update(str(v[0]) for v in (node.meta.get("nn_module_stack") or {}).values() if v)
    gone = ran[True] - ran[False]
    model = analysis.traced.module if analysis.traced.module is not None else source
    by_id: dict[int, set[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        by_id.setdefault(id(t), set()).add(name)
    dropped = read[True] - read[False]
    dropped |= {n for names in by_id.values() for n in names if _inside(n, gone)} - read[False]
    return frozenset(n for names in by_id.values() if names & dropped and not names & read[False] for n in names) \
        | dropped


def _tensor_names(module: nn.Module, prefix: str) -> set[str]:
    return {prefix + n for n, _ in [*module.named_parameters(remove_duplicate=False),
                                    *module.named_buffers(remove_duplicate=False)]}


def _inside(tensor: str, modules: set[str]) -> bool:
    parts = tensor.split(".")[:-1]
    return any(".".join(parts[:i]) in modules for i in range(1, len(parts) + 1))


def _removed_branches(analysis: Analysis, plan: PruningPlan, keep: torch.Tensor, source: nn.Module,
                      dead: set[str], constants: bool) -> dict[int, RemovedBranch]:
    """Each removed block with its constant term, evaluated on ``source``'s weights and sliced
    to the kept channels (None where it is zero or the block lies inside another removed one)."""
    out = {}
    for bid in sorted(plan.removed_blocks):
        block = analysis.blocks[bid]
        branch = analysis.traced.node(block.nodes[-1])
        chan = branch.meta.get("channels")
        constant = None
        if constants and block.add_node not in dead:  # a block inside another removed one goes with it
            try:
                constant = branch_constant(analysis.traced, block, root=source)
            except Exception as exc:  # noqa: BLE001 - re-raised with the block named
                raise RewriteError(f"cannot evaluate the constant of removed block {block.id} ({block.name}): "
                                   f"{type(exc).__name__}: {exc}") from exc
            constant = _slice_constant(constant, chan, keep)
        shape = _kept_shape(analysis.traced.values[branch.name], chan, keep)
        out[bid] = RemovedBranch(bid, block.name, shape, None if constant is None or bool((constant == 0).all())
                                 else constant)
    return out


def _slice_constant(t: torch.Tensor, chan: Any, keep: torch.Tensor) -> torch.Tensor:
    for dim, index in chan_slices(chan, keep) if isinstance(chan, Chan) else ():
        t = t.index_select(dim, index)
    return t.detach().clone()


def _kept_shape(value: torch.Tensor, chan: Any, keep: torch.Tensor) -> tuple[int, ...]:
    """The kept channel count on the branch output's channel dims, 1 elsewhere."""
    shape = [1] * value.dim()
    if isinstance(chan, Chan):
        for d in chan.dims():
            shape[d] = value.shape[d]
        for dim, index in chan_slices(chan, keep):
            shape[dim] = int(index.numel())
    return tuple(shape)


__all__ = ["RemovedBranch", "ResizeContext", "RewriteError", "SliceMap", "slice_map"]
