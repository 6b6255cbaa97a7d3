"""Stage 2: propagate channels through the traced graph and form channel groups.

One walk over the graph (an ``fx.Interpreter``) dispatches each node to its rule
(:mod:`gdp_graph.graph.rules`), storing what it learns on the node (``node.meta["channels"]``).
The union-find over elements then gives units; units of the same kind (made of elements of the
same spaces) form a group (:mod:`gdp_graph.graph.grouping`). The dependency graph (networkx)
links groups to the layers they touch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import networkx as nx
import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph import rules
from gdp_graph.graph.blocks import find_blocks
from gdp_graph.graph.channels import UNTRACKED, Chan, Track, flatten_chans, map_structure
from gdp_graph.graph.elements import ElementStore
from gdp_graph.graph.frontend_export import CONSTANT_BUFFER
from gdp_graph.graph.grouping import form_groups
from gdp_graph.graph.groups import Block, ChannelGroup, Member, OpaqueLeaf
from gdp_graph.graph.inputs import output_tensors
from gdp_graph.graph.parametrized import computed_weight_facts
from gdp_graph.graph.rules.context import RuleContext, target_name
from gdp_graph.graph.rules.elementwise import returns_an_input
from gdp_graph.graph.trace import TracedModel, trace
from gdp_graph.errors import GdpError


class AnalysisError(GdpError, RuntimeError):
    """A rule failed on a node; the message names the node."""


@dataclass
class Analysis:
    """Everything later stages need: the trace, the groups, the blocks and the element map."""

    traced: TracedModel
    groups: list[ChannelGroup]
    blocks: list[Block]
    store: ElementStore
    group_of_element: torch.Tensor  #: element id -> group id (-1: none)
    unit_of_element: torch.Tensor  #: element id -> unit index within its group
    _graph: Optional[nx.MultiDiGraph] = field(default=None, repr=False, compare=False)

    @property
    def graph(self) -> nx.MultiDiGraph:
        """Groups, blocks and layers as one networkx graph (:func:`_dependency_graph`), built on
        first use: only the reports read it, and on a 30-layer decoder it cost a tenth of the analysis."""
        if self._graph is None:
            self._graph = _dependency_graph(self.traced, self.groups, self.blocks)
        return self._graph

    @graph.setter
    def graph(self, graph: nx.MultiDiGraph) -> None:
        self._graph = graph

    @property
    def opaque(self) -> list[OpaqueLeaf]:
        return self.traced.opaque

    def chan(self, node: fx.Node) -> Any:
        return node.meta.get("channels", UNTRACKED)

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable and g.exact]

    def group(self, gid: int) -> ChannelGroup:
        return self.groups[gid]


def _param_chan(ctx_store: ElementStore, node: fx.Node, value: torch.Tensor, seen: dict[str, Chan]) -> Chan:
    """A parameter or buffer used directly in forward: each dim of size > 1 is a new space
    (the same one each time the attribute is read)."""
    if not torch.is_floating_point(value) or node.meta.get(CONSTANT_BUFFER):
        return UNTRACKED  # integer tables, non-persistent buffers (rotary inv_freq): constants
    if node.target in seen:
        return seen[node.target]
    tracks = []
    for d, size in enumerate(value.shape):
        if size > 1:
            labels = ctx_store.new_space(size, node.name, f"{node.target} dim {d}")
            ctx_store.add_member(labels, Member(node.name, str(node.target), "param", d, str(node.target)))
            tracks.append(Track((d,), labels))
    seen[node.target] = Chan(tuple(tracks))
    return seen[node.target]


def _contains_tensor(value: Any) -> bool:
    """Whether a node's value holds a tensor (nested in tuples, dicts, dataclass outputs)."""
    return bool(output_tensors(value))


def propagate(traced: TracedModel) -> ElementStore:
    """Run every node's rule; facts land in ``node.meta['channels']`` and the returned store."""
    store = ElementStore()
    _Propagation(traced, store).run(enable_io_processing=False)
    _tie_shared_modules(traced.gm, store)
    _resolve_joint_tracks(traced.gm, store)
    _check_uniform(store)
    return store


class _Propagation(fx.Interpreter):
    """One walk over the traced graph, dispatched per opcode: each node's value is its channels
    (the Interpreter's env, keyed by Node), also kept in ``node.meta['channels']``."""

    def __init__(self, traced: TracedModel, store: ElementStore):
        super().__init__(traced.gm, garbage_collect_values=False)
        self.extra_traceback = False  # the AnalysisError names the node itself
        self.traced, self.store = traced, store
        self.opaque = {o.module: o.reason for o in traced.opaque}
        self.params_seen: dict[str, Chan] = {}
        self.ctx: Optional[RuleContext] = None

    def run_node(self, n: fx.Node) -> Any:
        module = self.submodules.get(n.target) if n.op == "call_module" else None
        self.ctx = RuleContext(n, module, self.store, self.env)
        # every handler reads the node's inputs through ``ctx``: no arguments fetched for it
        chan = getattr(self, n.op)(n.target, (), {})
        n.meta["channels"] = chan
        return chan

    def placeholder(self, target: Any, args: tuple, kwargs: dict) -> Any:
        return map_structure(lambda _: UNTRACKED, self.ctx.out)

    def get_attr(self, target: Any, args: tuple, kwargs: dict) -> Any:
        value = self.ctx.out
        if not isinstance(value, torch.Tensor):
            return None
        return _param_chan(self.store, self.ctx.node, value, self.params_seen)

    def output(self, target: Any, args: tuple, kwargs: dict) -> Any:
        self.ctx.freeze_inputs("reaches the model output")
        return None

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        return self._call(self.ctx)

    call_method = call_function
    call_module = call_function

    def _call(self, ctx: RuleContext) -> Any:
        node, value, module = ctx.node, ctx.out, ctx.module
        if not _contains_tensor(value):
            return None  # shape arithmetic; the rewriter pins channel sizes it reads
        if node.op == "call_module" and node.target in self.opaque:
            ctx.freeze_inputs(f"enters opaque module '{node.target}' ({self.opaque[node.target]})")
            return map_structure(lambda _: UNTRACKED, value)
        rule = rules.lookup(module if module is not None else node.target)
        same = returns_an_input(ctx) if rule is None else None
        if same is not None:
            return same  # e.g. stochastic_depth in eval mode: returned its input as is
        if rule is None:
            kind = f"module type {type(module).__name__}" if module is not None else target_name(node)
            ctx.freeze_inputs(f"no rule for {kind}")
            return map_structure(lambda _: UNTRACKED, value)
        start = len(self.store.members)
        try:
            chan = rule.propagate(ctx)
        except Exception as exc:  # noqa: BLE001 - re-raised with the node named
            raise AnalysisError(f"channel rule failed on {ctx.where}: {type(exc).__name__}: {exc}\n"
                                f"  {node.format_node()}") from exc
        for labels, reason, frozen in computed_weight_facts(module, self.store.members[start:]) if module else ():
            (ctx.freeze if frozen else ctx.mark_inexact)(labels, f"module '{node.target}': {reason}")
        return UNTRACKED if chan is None and isinstance(value, torch.Tensor) else chan


def _check_uniform(store: ElementStore) -> None:
    """Freeze units that would shrink a dim whose size is fixed (an integer index into it)."""
    roots = store.roots()
    for labels, dim, where in store.uniform:
        classes = roots[labels].movedim(dim, 0).reshape(labels.shape[dim], -1)
        if not _same_sets(classes):
            store.freeze(labels, f"units would change the size of a dimension read by {where}")


def _same_sets(rows: torch.Tensor) -> bool:
    """Whether every row holds the same set of non-null classes (a presence table per row)."""
    if rows.shape[0] < 2 or rows.numel() == 0:
        return True
    classes, where = torch.unique(rows, return_inverse=True)
    present = torch.zeros(rows.shape[0], classes.numel(), dtype=torch.bool).scatter_(1, where, True)
    present[:, classes == 0] = False
    return bool((present == present[:1]).all())


def _tie_shared_modules(gm: fx.GraphModule, store: ElementStore) -> None:
    """A module called several times has one set of weights: tie its channels across calls."""
    ops = {n.name: n.op for n in gm.graph.nodes}
    first: dict[tuple, torch.Tensor] = {}
    for labels, m in store.members:
        if ops.get(m.node) != "call_module":
            continue
        key = (m.target, m.role, m.param, m.dim)
        if key not in first:
            first[key] = labels
        elif first[key].numel() == labels.numel():
            store.union(first[key], labels)


def _unit_dims(track: Track, roots: torch.Tensor) -> list[int]:
    """Positions (within ``track.dims``) of the dims along which whole slices are units."""
    classes = roots[track.labels]
    present = track.labels != 0
    found = []
    for k in range(len(track.dims)):
        rows = classes.movedim(k, 0).reshape(classes.shape[k], -1)
        mask = present.movedim(k, 0).reshape(classes.shape[k], -1)
        # each row's first present class; a row with another class present is not one unit
        first = rows.gather(1, mask.to(torch.uint8).argmax(1, keepdim=True))
        if not bool(((rows != first) & mask).any()):
            found.append(k)
    return found


def _depends_on_one_dim(track: Track, roots: torch.Tensor) -> bool:
    return bool(_unit_dims(track, roots))


def _distinct_joint_tracks(gm: fx.GraphModule) -> list[Track]:
    """Every joint track of the graph, each set of labels once (first seen): the same labels pass
    through many nodes (norms, adds, dropouts), and resolving a track reads nothing else (a
    Swin-T's 375 joint tracks hold 123 distinct ones)."""
    distinct: dict[tuple, Track] = {}
    for n in gm.graph.nodes:
        for c in flatten_chans(n.meta.get("channels")):
            for t in c.tracks:
                if not t.single():
                    key = (len(t.dims), t.labels.dtype, tuple(t.labels.shape), t.labels.numpy().tobytes())
                    distinct.setdefault(key, t)
    return list(distinct.values())


def _resolve_joint_tracks(gm: fx.GraphModule, store: ElementStore) -> None:
    """A joint track (e.g. ``(groups, channels_per_group)`` in a channel shuffle) can only lose
    whole slices along one dim. Where no rule chose the dim, tie along the innermost one."""
    joint = _distinct_joint_tracks(gm)
    for _ in range(len(joint) + 1):
        roots = store.roots()
        unresolved = [t for t in joint if not _depends_on_one_dim(t, roots)]
        if not unresolved:
            return
        for t in unresolved:
            store.union_along(t.labels, len(t.dims) - 1)
    _freeze_partial_slices(joint, store)


def _freeze_partial_slices(joint: list[Track], store: ElementStore) -> None:
    """A unit slice of a joint track that also holds untracked positions (nulls, e.g. channels
    concatenated from a model input) could only be removed in part, breaking the rectangle."""
    roots = store.roots()
    for t in joint:
        dims = _unit_dims(t, roots)
        if not dims:
            continue
        k = dims[0]
        rows = t.labels.movedim(k, 0).reshape(t.labels.shape[k], -1)
        for row in rows:
            if bool((row == 0).any()) and bool((row != 0).any()):
                store.freeze(row, "channels sharing a reshaped slice with untracked channels")


def analyze(model: nn.Module, example_inputs: Any, *, front_end: str = "auto", count_flops: bool = False,
            dynamic: str = "batch") -> Analysis:
    """Trace ``model`` (a copy) and find its channel groups and removable blocks.

    ``example_inputs``: a tensor, a tuple of positional inputs or a dict of keyword inputs.
    ``front_end``: ``"auto"`` (torch.fx, else torch.export), ``"fx"`` or ``"export"``.
    ``count_flops``: count each node's FLOPs while tracing (``node.meta["flops"]``, which the
    gates' cost model reads; otherwise it runs the graph again to count them).
    ``dynamic``: ``"tokens"`` exports integer inputs with a symbolic sequence length too (see
    :func:`~gdp_graph.graph.trace.trace`)."""
    traced = trace(model, example_inputs, front_end=front_end, count_flops=count_flops, dynamic=dynamic)
    return analyze_traced(traced)


def analyze_traced(traced: TracedModel) -> Analysis:
    store = propagate(traced)
    roots = store.roots()
    groups, group_of, unit_of = form_groups(traced, store, roots)
    blocks = find_blocks(traced, groups)
    return Analysis(traced, groups, blocks, store, group_of, unit_of)


def _dependency_graph(traced: TracedModel, groups: list[ChannelGroup], blocks: list[Block]) -> nx.MultiDiGraph:
    """Groups, blocks and layers as one graph: data-flow edges between layers, membership
    edges from each group (by role) and block to the layers it covers."""
    graph = nx.MultiDiGraph()
    for node in traced.gm.graph.nodes:
        graph.add_node(("node", node.name), op=node.op, target=target_name(node))
        for inp in node.all_input_nodes:
            graph.add_edge(("node", inp.name), ("node", node.name), kind="data")
    for g in groups:
        graph.add_node(("group", g.id), size=g.size, unit=g.unit, prunable=g.prunable)
        for m in g.members:
            graph.add_edge(("group", g.id), ("node", m.node), kind=m.role, dim=m.dim)
    for b in blocks:
        graph.add_node(("block", b.id), name=b.name)
        for name in b.nodes:
            graph.add_edge(("block", b.id), ("node", name), kind="branch")
    return graph
