"""Insert channel multipliers before the consuming ops of a traced graph: ONE graph pass, used
both for the learnable gates of training (:mod:`gdp_graph.gates.model`) and for the fixed 0/1
masks of the *gated reference* that ``verify`` compares against
(:func:`gdp_graph.prune.verify.gated_reference`).

A *site* is one input of one node, along one dim: every channel group (and block) that gates
that input contributes a factor, and the multiplier at the site is their product. A *provider*
module, called once right after the graph's inputs, returns one multiplier per site. At a plain
conv (``groups == 1``) or linear layer called on its input alone, the multiplier scales the
layer's input columns (:func:`gated_layer`: the same function as scaling the input, without an
extra pass over the activation); anywhere else :func:`gate_multiply` multiplies the input.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from gdp_graph.errors import GdpError
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.model_copy import deepcopy_model

__all__ = ["Factor", "SiteSpec", "collect_sites", "gate_multiply", "gated_layer", "insert_site_multipliers",
           "FixedScales", "broadcast_shape", "site_mask"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: ``("group", gid, unit index per position, -1 for none)`` or ``("block", bid, None)``
Factor = tuple[str, int, Optional[Tensor]]


class InjectError(GdpError, ValueError):
    """A multiplier cannot be placed where the analysis says (names the node)."""


@dataclass(frozen=True)
class SiteSpec:
    """One multiplier: input ``arg`` of ``node`` along ``dim`` (``ndim`` dims, ``size``
    positions), the ``factors`` whose product it is, the ``shape`` the provider returns it in,
    and ``mode``: ``"input"`` (``shape`` broadcasts against the input) or ``"weight"``
    (``shape`` broadcasts against the layer's weight, see :func:`gated_layer`)."""

    node: str
    arg: int
    dim: int
    ndim: int
    size: int
    factors: tuple[Factor, ...]
    shape: tuple[int, ...]
    mode: str = "input"

    def describe(self) -> str:
        what = " * ".join(f"{k} {i}" for k, i, _ in self.factors)
        return f"input {self.arg} of node '{self.node}' along dim {self.dim} ({what})"


def gate_multiply(x: Tensor, scale: Tensor) -> Tensor:
    """``x * scale`` in ``x``'s dtype (a bf16 activation stays bf16 under autocast)."""
    return x * scale.to(x.dtype)


def gated_layer(layer: nn.Module, x: Tensor, scale: Tensor) -> Tensor:
    """``layer(x * g)`` computed as ``layer`` with its input columns scaled by ``g``: a plain
    ``nn.ConvNd`` (``groups == 1``) or ``nn.Linear``; ``scale`` is shaped like the weight."""
    weight = layer.weight * scale.to(layer.weight.dtype)
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def broadcast_shape(dim: int, ndim: int, size: int) -> list[int]:
    shape = [1] * ndim
    shape[dim % ndim] = size
    return shape


def _weight_shape(gm: fx.GraphModule, node: fx.Node, arg: int, dim: int, ndim: int) -> Optional[tuple[int, ...]]:
    """The weight-shaped view of a site's scale when the site's layer can take the multiplier on
    its weight (a plain conv with ``groups == 1`` or a linear layer, called with the input
    alone), else None."""
    if node.op != "call_module" or arg != 0 or len(node.args) != 1 or node.kwargs:
        return None
    layer = gm.get_submodule(str(node.target))
    if layer._forward_pre_hooks or layer._forward_hooks:  # e.g. weight_norm computes the weight in a hook
        return None
    if type(layer) in _CONVS and layer.groups == 1 and dim % ndim == 1:
        return (1, -1) + (1,) * (layer.weight.dim() - 2)
    if type(layer) is nn.Linear and dim % ndim == ndim - 1:
        return (1, -1)
    return None


def collect_sites(analysis: Analysis, groups: Sequence[int], blocks: Sequence[int]) -> list[SiteSpec]:
    """One site per (node, arg, dim) touched by the gate sites of ``groups``; a block's factor
    joins a site of the same (node, arg) when there is one, else gets its own."""
    keyed: dict[tuple[str, int, int], list[Factor]] = {}
    shape: dict[tuple[str, int, int], tuple[int, int]] = {}
    for gid in groups:
        for s in analysis.groups[gid].gate_sites:
            key = (s.node, s.arg, s.dim)
            keyed.setdefault(key, []).append(("group", gid, s.unit_index.reshape(-1).long()))
            shape[key] = (s.ndim, s.unit_index.numel())
    for bid in blocks:
        for s in analysis.blocks[bid].gate_sites:
            key = next((k for k in keyed if k[:2] == (s.node, s.arg)), (s.node, s.arg, s.dim))
            keyed.setdefault(key, []).append(("block", bid, None))
            shape.setdefault(key, (s.ndim, 1))
    gm = analysis.traced.gm
    nodes = {n.name: n for n in gm.graph.nodes}
    sites = []
    for (name, arg, dim), factors in keyed.items():
        ndim, size = shape[(name, arg, dim)]
        if name not in nodes:
            raise InjectError(f"gate site at node '{name}': no such node in the traced graph")
        view = _weight_shape(gm, nodes[name], arg, dim, ndim)
        mode = "input" if view is None else "weight"
        sites.append(SiteSpec(name, arg, dim, ndim, size, tuple(factors),
                              tuple(view if view is not None else broadcast_shape(dim, ndim, size)), mode))
    return sites


def _unique_attr(gm: nn.Module, base: str) -> str:
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    return name


def insert_site_multipliers(analysis: Analysis, provider: nn.Module, sites: Sequence[SiteSpec],
                            name: str) -> fx.GraphModule:
    """A copy of the traced graph that calls ``provider()`` once after its inputs (it returns one
    multiplier per site, in ``sites`` order, shaped as the site says) and applies each: in
    weight mode ``gated_layer(layer, input, scale)`` replaces the layer call, else the input
    becomes ``gate_multiply(input, scale)``."""
    gm = deepcopy_model(analysis.traced.gm)
    attr = _unique_attr(gm, name)
    gm.add_submodule(attr, provider)
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    anchor = placeholders[-1] if placeholders else next(iter(graph.nodes))
    with graph.inserting_after(anchor):
        provider_node = graph.call_module(attr, ())
    for i, site in enumerate(sites):
        node = nodes[site.node]
        if site.arg >= len(node.args) or not isinstance(node.args[site.arg], fx.Node):
            raise InjectError(f"gate site {site.describe()}: the input is not a positional tensor argument "
                              f"({node.format_node()})")
        with graph.inserting_before(node):
            scale = graph.call_function(operator.getitem, (provider_node, i))
            if site.mode == "weight":
                layer = graph.get_attr(str(node.target))
                replacement = graph.call_function(gated_layer, (layer, node.args[0], scale))
                replacement.meta = dict(node.meta)
                node.replace_all_uses_with(replacement)
                graph.erase_node(node)
                continue
            gated = graph.call_function(gate_multiply, (node.args[site.arg], scale))
        args = list(node.args)
        args[site.arg] = gated
        node.args = tuple(args)
    graph.lint()
    gm.recompile()
    return gm


class FixedScales(nn.Module):
    """A provider of constant multipliers (e.g. 0/1 masks), one buffer per site."""

    def __init__(self, scales: Sequence[Tensor]):
        super().__init__()
        self.count = len(scales)
        for i, s in enumerate(scales):
            self.register_buffer(f"scale_{i}", s)

    def forward(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f"scale_{i}") for i in range(self.count))


def site_mask(site: SiteSpec, kept: dict[int, Tensor], removed_blocks: frozenset[int]) -> Tensor:
    """The 0/1 multiplier of ``site`` (shaped as the site says) given each group's kept units
    (``kept[gid]``: one bool per unit; groups absent keep everything) and the removed blocks."""
    mask = torch.ones(site.size)
    for kind, ident, unit_index in site.factors:
        if kind == "group" and ident in kept:
            ext = torch.cat([kept[ident].float(), torch.ones(1)])  # index -1: a position of no unit
            mask = mask * ext[unit_index]
        elif kind == "block" and ident in removed_blocks:
            mask = mask * 0.0
    return mask.reshape(site.shape)
