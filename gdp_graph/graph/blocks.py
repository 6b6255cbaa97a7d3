"""Removable residual branches: ``add(shortcut, branch(x))`` where the branch is self-contained.

Removing a branch means gating its inputs to zero. It then outputs a constant (the bias of its
last norm, say): the block is removable when that constant is the same at every position
(a per-channel vector), so the rewriter can keep it as ``shortcut + c``.
"""

from __future__ import annotations

import operator
import os
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph.channels import Chan
from gdp_graph.graph.collapsed import collapsed_run
from gdp_graph.graph.groups import Block, ChannelGroup, GateSite
from gdp_graph.graph.meta import SHAPE_ONLY, VALUE
from gdp_graph.graph.trace import TracedModel

_ADDS = (operator.add, operator.iadd, torch.add,
         torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)  # aten: torch.export


def _is_add(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _ADDS)
            or (node.op == "call_method" and node.target in ("add", "add_")))


class _Ancestry:
    """Which nodes each node depends on (itself included).

    One pass in graph order ORs each node's inputs' ancestor sets, kept as integer bitmasks
    (bit i: the i-th node); a breadth-first search per query (networkx ``ancestors``) cost
    0.12 s on a Swin-T's 868 nodes, this pass about a millisecond. Sets of nodes stay masks
    until their nodes are listed (numpy reads the bits: a 30-layer decoder has 2,200 nodes)."""

    def __init__(self, graph: fx.Graph):
        self._nodes = list(graph.nodes)
        self._position = {n.name: i for i, n in enumerate(self._nodes)}
        self._mask: dict[str, int] = {}
        for i, n in enumerate(self._nodes):
            mask = 1 << i
            for a in n.all_input_nodes:
                mask |= self._mask[a.name]
            self._mask[n.name] = mask

    def mask(self, node: fx.Node) -> int:
        return self._mask[node.name]

    def depends(self, node: fx.Node, name: str) -> bool:
        """Whether ``node`` depends on the node called ``name``."""
        return bool(self._mask[node.name] >> self._position[name] & 1)

    def nodes(self, mask: int) -> list[fx.Node]:
        """The nodes of ``mask``, in graph order."""
        raw = np.frombuffer(mask.to_bytes((mask.bit_length() + 7) // 8 or 1, "little"), dtype=np.uint8)
        return [self._nodes[i] for i in np.flatnonzero(np.unpackbits(raw, bitorder="little")).tolist()]

    def in_order(self, names: set[str]) -> list[fx.Node]:
        return [self._nodes[i] for i in sorted(self._position[n] for n in names)]

    def within(self, mask: int) -> "_Within":
        return _Within(mask, self._position)


class _Within:
    """A set of node names given as an ancestry mask: membership is one bit test."""

    def __init__(self, mask: int, position: dict[str, int]):
        self.mask, self.position = mask, position

    def __contains__(self, name: object) -> bool:
        return name in self.position and bool(self.mask >> self.position[name] & 1)


def _common_prefix(names: list[str]) -> str:
    """The qualified name of the deepest module holding all ``names`` (a strict container)."""
    if not names:
        return ""
    prefix = os.path.commonprefix([n.split(".") for n in names])
    if len(names) > 1 and len(prefix) == len(names[0].split(".")):
        prefix = prefix[:-1]
    return ".".join(prefix)


def find_blocks(traced: TracedModel, groups: list[ChannelGroup]) -> list[Block]:
    gm = traced.gm
    runner = _ZeroedInputs(gm, gm.graph)  # what each branch outputs on zero input
    ancestors = _Ancestry(gm.graph)
    blocks: list[Block] = []
    for node in gm.graph.nodes:
        if not _is_add(node) or len(node.args) < 2:
            continue
        operands = node.args[:2]
        if not all(isinstance(a, fx.Node) and isinstance(a.meta.get(VALUE), torch.Tensor) for a in operands):
            continue
        # one removable branch per add: the longer one when both qualify (the main branch of a
        # downsampling block, not its projection shortcut)
        candidates = [b for arg in (1, 0)
                      if (b := _branch_block(traced, runner, ancestors, node, arg, operands[arg], operands[1 - arg],
                                             len(blocks), groups)) is not None]
        if candidates:
            blocks.append(max(candidates, key=lambda b: len(b.nodes)))
    block_nodes = [(b, set(b.nodes)) for b in blocks]
    for g in groups:
        member_nodes = {m.node for m in g.members}
        inside = [b for b, names in block_nodes if member_nodes and member_nodes <= names]
        if inside:
            g.block = min(inside, key=lambda b: len(b.nodes)).id
    return blocks


def _terminal_sites(member_nodes: list[fx.Node], members: set[str], groups: list[ChannelGroup],
                    ancestors: _Ancestry) -> list[GateSite]:
    """Gate sites of the branch's last consuming layers: zeroing their inputs makes the branch
    output depend on nothing but biases."""
    sites: dict[tuple[str, int], GateSite] = {}
    for g in groups:
        for s in g.gate_sites:
            if s.node in members:
                sites.setdefault((s.node, s.arg),
                                 GateSite(s.node, s.arg, s.dim, s.ndim, torch.zeros(1, dtype=torch.long)))
    consumers = {node for node, _ in sites}
    by_name = {n.name: n for n in member_nodes}
    terminal = {c for c in consumers
                if not any(c != d and ancestors.depends(by_name[d], c) for d in consumers)}
    return [s for (node, _), s in sites.items() if node in terminal]


def _entry_sites(member_nodes: list[fx.Node], members: set[str]) -> list[GateSite]:
    """Where the branch's input enters its layers, for a branch that mixes no channels (no
    gate site of a group: ConvMixer's ``Residual`` around a depthwise conv, BatchNorm and GELU):
    zeroing it there leaves the layers' biases, which the branch constant check then judges."""
    sites = []
    for n in member_nodes:
        if n.op != "call_module":
            continue
        for i, a in enumerate(n.args):
            value = a.meta.get(VALUE) if isinstance(a, fx.Node) and a.name not in members else None
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 2:
                sites.append(GateSite(n.name, i, 1, value.dim(), torch.zeros(1, dtype=torch.long)))
    return sites


def _checks_on(order: list[fx.Node], members: set[str]) -> set[str]:
    """Nodes hanging off the branch (``order``: its nodes in graph order) that compute no tensor,
    directly or downstream: shape checks such as timm's ``torch._assert(x.ndim == 4, ...)``.
    They go with the branch."""
    def tensor_free(n: fx.Node, seen: set[str]) -> bool:
        if n.name in seen:
            return True
        seen.add(n.name)
        if n.op == "output" or isinstance(n.meta.get(VALUE), torch.Tensor):
            return False
        return all(tensor_free(u, seen) for u in n.users)

    found: set[str] = set()
    for n in order:
        if n.name in members:
            for u in n.users:
                seen: set[str] = set()
                if u.name not in members and tensor_free(u, seen):
                    found |= seen
    return found


def _without_shared_side_inputs(order: list[fx.Node], outside: _Within) -> set[str]:
    """The branch (``order``: its nodes in graph order) without side computations it shares with
    later code: a rotary table or an attention mask built from constants or token ids, first used
    by the first decoder layer's attention and then by every other layer. The branch proper is
    what its floating-point input flows through, plus what only it uses (its weights)."""
    fed: set[str] = set()
    for n in order:
        value = n.meta.get(VALUE)
        if not (isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list)) and value
                                                     and all(isinstance(v, torch.Tensor) for v in value))):
            continue  # sizes read off the data (x.shape[0]) are side values, shared or not
        for a in n.all_input_nodes:
            value = a.meta.get(VALUE)
            if a.name in fed or (a.name in outside and isinstance(value, torch.Tensor) and value.is_floating_point()):
                fed.add(n.name)
                break
    kept = set(fed)
    for n in reversed(order):
        if n.name not in kept and n.users and all(u.name in kept for u in n.users):
            kept.add(n.name)
    return kept


def _branch_block(traced, runner: "_ZeroedInputs", ancestors: _Ancestry, add: fx.Node, arg: int, branch: fx.Node,
                  other: fx.Node, bid: int, groups: list[ChannelGroup]) -> Optional[Block]:
    if branch.meta[VALUE].shape != add.meta[VALUE].shape:
        return None
    outside = ancestors.mask(other)
    order = ancestors.nodes(ancestors.mask(branch) & ~outside)
    if branch not in order:
        return None
    members = _without_shared_side_inputs(order, ancestors.within(outside))
    if branch.name not in members:
        return None
    members |= _checks_on(order, members)
    member_nodes = ancestors.in_order(members)
    if any(n.op == "placeholder" for n in member_nodes):
        return None
    for n in member_nodes:
        if n is not branch and any(u.name not in members for u in n.users):
            return None
    if any(u is not add for u in branch.users):
        return None
    modules = list(dict.fromkeys(str(n.target) if n.op == "call_module" else str(n.target).rpartition(".")[0]
                                 for n in member_nodes if n.op in ("call_module", "get_attr")))
    params = [n for n in member_nodes if n.op in ("call_module", "get_attr")]
    if not params:
        return None
    sites = _terminal_sites(member_nodes, members, groups, ancestors) or _entry_sites(member_nodes, members)
    if not sites:
        return None
    identity = any(isinstance(a, fx.Node) and a.name == other.name for n in member_nodes for a in n.all_input_nodes)
    block = Block(id=bid, name=_common_prefix(modules) or branch.name, add_node=add.name, arg=arg,
                  nodes=[n.name for n in member_nodes], modules=modules, shortcut_is_identity=identity,
                  gate_sites=sites)
    try:
        constant = branch_constant(traced, block, runner=runner)
    except Exception as exc:  # noqa: BLE001 - recorded as the reason the block stays
        if any(p.is_meta for p in traced.gm.parameters()):
            block.frozen_reasons.append(f"on the meta device the branch's constant on zero input needs the weights "
                                        f"(only a branch ending in a bias-free linear or convolution is known to "
                                        f"give zero): {type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
        else:
            block.frozen_reasons.append(f"cannot evaluate the branch on zero input: {type(exc).__name__}: {exc}")
        return block
    if constant is None:
        block.frozen_reasons.append("the branch output on zero input is not a per-channel constant")
    return block


#: layers whose output on an all-zero input is their bias at every position (zero padding pads
#: zeros too): a ViT's 24 branch constants cost 0.17 s of dense matmuls on zeros before this
_BIAS_ON_ZERO = {nn.Linear: 0, nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}  # type -> spatial dims
#: the same layers as functions (torch.export writes every nn.Linear as aten.linear): function ->
#: (spatial dims, position of the bias argument)
_BIAS_ON_ZERO_FUNCTIONS = {torch.ops.aten.linear.default: (0, 2), torch.nn.functional.linear: (0, 2),
                           torch.ops.aten.conv2d.default: (2, 2), torch.ops.aten.conv1d.default: (1, 2)}


class _ZeroedInputs(fx.Interpreter):
    """Runs a graph with the given ``(node name, arg index)`` inputs replaced by zeros.

    The shape of each node's value on the example inputs (``node.meta[VALUE]``) lets a layer of
    ``_BIAS_ON_ZERO`` whose only input is zeroed return its bias without running."""

    def __init__(self, module: torch.nn.Module, graph: fx.Graph):
        # its construction walks every submodule: one runner serves all blocks of a graph
        super().__init__(module, garbage_collect_values=False, graph=graph)
        self.zeroed: set[tuple[str, int]] = set()

    def run_node(self, n: fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self._inputs(n)
            if n.op == "call_module" and len(args) == 1 and not kwargs and (n.name, 0) in self.zeroed \
                    and isinstance(n.meta.get(VALUE), torch.Tensor):
                layer = self.fetch_attr(str(n.target))
                spatial = _BIAS_ON_ZERO.get(type(layer))
                if spatial is not None:
                    return _bias_everywhere(getattr(layer, "bias", None), n.meta[VALUE].shape, spatial, args[0])
            if n.op == "call_function" and n.target in _BIAS_ON_ZERO_FUNCTIONS and (n.name, 0) in self.zeroed \
                    and isinstance(n.meta.get(VALUE), torch.Tensor):
                spatial, at = _BIAS_ON_ZERO_FUNCTIONS[n.target]
                bias = args[at] if len(args) > at else kwargs.get("bias")
                return _bias_everywhere(bias, n.meta[VALUE].shape, spatial, args[0])
            args = tuple(torch.zeros_like(a) if (n.name, i) in self.zeroed else a for i, a in enumerate(args))
            return getattr(self, n.op)(n.target, args, kwargs)

    def _inputs(self, n: fx.Node) -> tuple[tuple, dict]:
        """``n``'s arguments from the environment; one about to be zeroed is read for its shape
        only: a shape-only value (:mod:`.shapes_only`) is not made real for it."""
        if not any((n.name, i) in self.zeroed for i in range(len(n.args))):
            return self.fetch_args_kwargs_from_env(n)
        args = tuple((dict.get(self.env, a) if dict.__contains__(self.env, a) else a.meta[VALUE])
                     if (n.name, i) in self.zeroed and isinstance(a, fx.Node) else self.map_nodes_to_values(a, n)
                     for i, a in enumerate(n.args))
        return args, self.map_nodes_to_values(n.kwargs, n)


def _bias_everywhere(bias: Optional[torch.Tensor], shape: torch.Size, spatial: int, x: torch.Tensor) -> torch.Tensor:
    """What a layer returns on an all-zero input: its bias broadcast over ``shape``. Without a
    bias that is zero whatever the weights, so a model on the meta device gets a real zero
    (on the CPU) there: a bias-free branch's constant needs no weights."""
    if bias is None:
        return torch.zeros(shape, dtype=x.dtype, device="cpu" if x.is_meta else x.device)
    if bias.is_meta:
        raise ValueError("it is its last layer's bias")
    return bias.detach().to(x.dtype).reshape(-1, *[1] * spatial).expand(shape).contiguous()


class _Recorded(dict):
    """A branch run's environment: a node not run again reads its recorded value
    (``node.meta[VALUE]``) on first use, instead of every node's being copied in per block.
    ``real_values``: called first where that value holds a shape only (:mod:`.shapes_only`)."""

    def __init__(self, rerun: set[str], real_values: Callable[[], None]):
        super().__init__()
        self.rerun, self.real_values = rerun, real_values

    def __contains__(self, n: object) -> bool:
        return dict.__contains__(self, n) or (isinstance(n, fx.Node) and n.name not in self.rerun
                                              and n.op not in ("get_attr", "output") and VALUE in n.meta)

    def __missing__(self, n: fx.Node) -> Any:
        if n not in self:
            raise KeyError(n)
        if n.meta.get(SHAPE_ONLY):
            self.real_values()
        return n.meta[VALUE]


def _reduce(value: torch.Tensor, dims: list[int], op: Callable) -> torch.Tensor:
    """``op(value, dims, keepdim=True)``, read off one position of each dim ``value`` is
    broadcast along (stride 0: the same values, at a fraction of the cost)."""
    if not dims:
        return value
    one = [d for d in dims if value.stride(d) == 0 or value.shape[d] == 1]
    base = value[tuple(slice(0, 1) if d in one else slice(None) for d in range(value.dim()))]
    rest = [d for d in dims if d not in one]
    return op(base, dim=rest, keepdim=True) if rest else base


def _upstream_missing(node: fx.Node, env: _Recorded) -> list[fx.Node]:
    """The nodes ``node`` needs that ``env`` has no value for (``node`` included), in graph
    order: a branch constant runs only these, not the whole graph."""
    need, todo = {node}, [node]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in need and a not in env:
                need.add(a)
                todo.append(a)
    return [n for n in node.graph.nodes if n in need]


def _branch_output(runner: _ZeroedInputs, rerun: set[str], branch: fx.Node, collapse: bool,
                   real_values: Callable[[], None]) -> torch.Tensor:
    """The branch's output with its gated layers' inputs zeroed. ``collapse``: the zeroed
    layers' biases go through the rest of the branch at one position where every op there acts
    position by position (:mod:`.collapsed`), broadcast back to the output's shape."""
    runner.env = env = _Recorded(rerun, real_values)
    order = _upstream_missing(branch, env)
    full = branch.meta[VALUE].shape
    if collapse and collapsed_run(order, env, runner.zeroed, runner.fetch_attr, runner.run_node, _BIAS_ON_ZERO, VALUE):
        value = env[branch]
        if isinstance(value, torch.Tensor) and value.dim() == len(full) and \
                all(a in (1, b) for a, b in zip(value.shape, full)):
            return value.expand(full)
    runner.env = env = _Recorded(rerun, real_values)
    for n in order:
        env[n] = runner.run_node(n)
    return env[branch]


def branch_constant(traced: TracedModel, block: Block, root: Optional[torch.nn.Module] = None,
                    runner: Optional[_ZeroedInputs] = None) -> Optional[torch.Tensor]:
    """What the branch outputs when its block gate is zero (the inputs of its last consuming
    layers zeroed), reduced to a broadcastable tensor (size 1 on every untracked dim), or None
    when it varies along an untracked dim.

    ``root``: a module with the traced graph's structure whose layers and attributes to use
    (e.g. trained weights); defaults to the traced module. ``runner``: a ``_ZeroedInputs`` on
    that module and the traced graph, reused from an earlier call."""
    gm = traced.gm
    # every node outside the branch keeps its recorded value; the branch runs again (on the
    # weights of ``root``), with the inputs of its gated layers zeroed
    rerun = set(block.nodes)
    if root is None:
        # on the traced weights, branch nodes upstream of the zeroed layers keep their values
        # too: only the gated layers and what follows them run again
        rerun = {s.node for s in block.gate_sites}
        for n in map(traced.node, block.nodes):
            if n.name in rerun or any(a.name in rerun for a in n.all_input_nodes):
                rerun.add(n.name)
    runner = runner if runner is not None else _ZeroedInputs(root if root is not None else gm, gm.graph)
    runner.zeroed = {(s.node, s.arg) for s in block.gate_sites}
    branch = traced.node(block.nodes[-1])
    with torch.no_grad():
        value = _branch_output(runner, rerun, branch, collapse=root is None, real_values=traced.real_values)
    chan = branch.meta.get("channels")
    keep = chan.dims() if isinstance(chan, Chan) else set()
    reduce_dims = [d for d in range(value.dim()) if d not in keep]
    reduced = _reduce(value, reduce_dims, torch.amax)
    low = _reduce(value, reduce_dims, torch.amin)
    # the largest magnitude, read off the extremes already taken: no full-size pass of its own
    scale = max(abs(float(reduced.max())), abs(float(low.min()))) if value.numel() else 0.0
    if float((reduced - low).abs().max()) > 1e-6 * max(1.0, scale):
        return None
    return reduced
