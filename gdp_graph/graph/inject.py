"""Insert channel multipliers before consuming ops of a traced graph.

Used twice with the same sites: with fixed 0/1 masks to build the *gated reference* that
``verify`` compares against, and with learnable gates for training (:mod:`gdp_graph.gates.model`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph.groups import GateSite


class FixedScale(nn.Module):
    """Multiplies its input by a constant tensor (a 0/1 mask, broadcast along one dim)."""

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)


def broadcast_shape(dim: int, ndim: int, size: int) -> list[int]:
    shape = [1] * ndim
    shape[dim % ndim] = size
    return shape


def insert_multipliers(gm: fx.GraphModule, items: Iterable[tuple[str, int, nn.Module]], prefix: str) -> fx.GraphModule:
    """Insert ``module(x)`` for arg ``arg`` of node ``node`` for each item, in place.

    Several multipliers on one (node, arg) are chained. Returns ``gm`` recompiled.
    """
    nodes = {n.name: n for n in gm.graph.nodes}
    by_site: dict[tuple[str, int], list[nn.Module]] = defaultdict(list)
    for node, arg, module in items:
        by_site[(node, arg)].append(module)
    count = 0
    for (name, arg), modules in by_site.items():
        node = nodes[name]
        current = node.args[arg]
        for module in modules:
            attr = f"{prefix}{count}"
            count += 1
            gm.add_submodule(attr, module)
            with gm.graph.inserting_before(node):
                current = gm.graph.call_module(attr, (current,))
        args = list(node.args)
        args[arg] = current
        node.args = tuple(args)
    gm.graph.lint()
    gm.recompile()
    return gm


def site_mask(sites: list[GateSite], unit_kept: list[torch.Tensor]) -> torch.Tensor:
    """The 0/1 mask over a site's positions given each group's kept units (positions of other
    groups are 1). ``sites`` share one (node, arg, dim)."""
    mask = torch.ones(sites[0].unit_index.numel())
    for site, kept in zip(sites, unit_kept):
        ext = torch.cat([kept.float(), torch.ones(1)])
        mask = mask * ext[site.unit_index]
    return mask
