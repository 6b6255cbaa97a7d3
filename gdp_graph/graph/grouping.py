"""Stage 2, second half: units (union-find classes of elements) made of elements of the same
spaces form one channel group; each group gets its members, gate sites and frozen reasons from
the facts the rules recorded."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx as fx

from gdp_graph.graph.elements import ElementStore
from gdp_graph.graph.groups import ChannelGroup, GateSite, Member
from gdp_graph.graph.trace import TracedModel


def form_groups(traced: TracedModel, store: ElementStore, roots: torch.Tensor):
    """Units (union-find classes) made of elements of the same spaces form one group; groups
    are numbered by their smallest element, units within a group by their root."""
    n = store.count
    unit_roots, gid, unit_index, sizes = _number_units(store, roots)
    group_of_root = torch.full((n,), -1, dtype=torch.long)
    unit_of_root = torch.full((n,), -1, dtype=torch.long)
    group_of_root[unit_roots] = gid
    unit_of_root[unit_roots] = unit_index
    group_of = group_of_root[roots]
    unit_of = unit_of_root[roots]
    group_of[0] = -1
    unit_of[0] = -1
    groups = [ChannelGroup(id=g, size=size, unit="channel", unit_width=1,
                           frozen_units=torch.zeros(size, dtype=torch.bool))
              for g, size in enumerate(sizes)]
    _attach_facts(traced, store, groups, group_of, unit_of)
    return groups, group_of, unit_of


def _number_units(store: ElementStore,
                  roots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Each unit's root (ascending), group id and index within its group, and the group sizes.

    A unit's signature is the sorted list of spaces its elements come from; a group is all units
    of one signature, numbered by its smallest root. Most units lie in one space, whose id is
    their signature; the others are told apart as rows of spaces, one width at a time."""
    space_of = store.space_of_elements()
    # distinct (root, space) pairs, sorted by root then space, encoded as one integer (a
    # plain unique is far faster than a row-wise one): each unit's sorted space signature
    stride = len(store.spaces) + 1
    pairs = torch.unique(roots[1:] * stride + space_of[1:])
    unit_roots, widths = torch.unique_consecutive(pairs // stride, return_counts=True)
    spaces = pairs % stride
    starts = widths.cumsum(0) - widths
    signature = spaces[starts].clone()  # one space: its id
    offset = stride
    for width in torch.unique(widths[widths > 1]).tolist():
        # the units of one width: a row of spaces each, the same signature where the rows are equal
        units = torch.nonzero(widths == width).flatten()
        rows = spaces[starts[units].unsqueeze(1) + torch.arange(width)]
        distinct, which = _distinct_rows(rows, stride)
        signature[units] = offset + which
        offset += distinct
    keys, which = torch.unique(signature, return_inverse=True)
    count = torch.arange(which.numel())
    first = torch.full((keys.numel(),), which.numel(), dtype=torch.long).scatter_reduce(0, which, count, "amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(first.numel())
    gid = rank[which]
    order = torch.argsort(gid, stable=True)  # by group, then root
    sizes = torch.bincount(gid, minlength=first.numel())
    unit_index = torch.empty_like(gid)
    unit_index[order] = count - (sizes.cumsum(0) - sizes)[gid[order]]
    return unit_roots, gid, unit_index, sizes.tolist()


def _distinct_rows(rows: torch.Tensor, base: int) -> tuple[int, torch.Tensor]:
    """The number of distinct rows and an index per row, equal for equal rows only (the group
    numbering reads nothing else). Entries lie in ``[0, base)``, so where a row fits in 63 bits
    it is read as one integer in base ``base``: a row-wise unique was a tenth of a MobileNetV3's
    analysis. Longer rows are hashed to one integer, and the rows sharing a hash are checked
    equal (a row-wise unique only where two differ: 2 ms on a ConvNeXt-T's rows of 16-48)."""
    if rows.shape[1] * math.log2(max(base, 2)) < 62:
        code = rows[:, 0].clone()
        for k in range(1, rows.shape[1]):
            code = code * base + rows[:, k]
        distinct, which = torch.unique(code, return_inverse=True)
        return distinct.numel(), which
    # a polynomial hash modulo 2**31 - 1: entries below ``base``, so each term is below base * 2**31
    # and the sum of a row stays far from 2**63 (no overflow)
    prime = 2**31 - 1
    powers = torch.tensor([pow(1_000_003, k, prime) for k in range(rows.shape[1])], dtype=torch.long)
    distinct, which = torch.unique((rows % prime * powers).sum(1) % prime, return_inverse=True)
    first = torch.full((distinct.numel(),), which.numel(), dtype=torch.long)
    first.scatter_reduce_(0, which, torch.arange(which.numel()), "amin")
    if bool((rows == rows[first[which]]).all()):
        return distinct.numel(), which
    distinct, which = torch.unique(rows, dim=0, return_inverse=True)
    return distinct.shape[0], which


def _groups_of_each(labels: list[torch.Tensor], group_of: torch.Tensor) -> list[list[int]]:
    """The distinct group ids (ascending) of each labels tensor's non-null elements, read from
    one count over (tensor, group) cells filled by all of them at once (one ``unique`` per
    tensor was most of the analysis's group stage)."""
    if not labels:
        return []
    flat = torch.cat([t.reshape(-1) for t in labels])
    owner = torch.repeat_interleave(torch.arange(len(labels)), torch.tensor([t.numel() for t in labels]))
    width = int(group_of.max()) + 1 if group_of.numel() else 0
    gid = group_of[flat]  # -1 for the null element
    # (tensor, group) as one bin of a count, nulls in a last bin: no masked copies, no 2-D write
    cell = torch.where(gid >= 0, owner * width + gid, len(labels) * width)
    hits = torch.bincount(cell, minlength=len(labels) * width + 1)[:-1].nonzero().flatten().tolist()
    found: list[list[int]] = [[] for _ in labels]
    for k in hits:
        found[k // width].append(k % width)
    return found


def _add_reasons(groups: list[ChannelGroup], facts: list[tuple[torch.Tensor, str]], group_of: torch.Tensor,
                 field_name: str) -> None:
    for (_, reason), gids in zip(facts, _groups_of_each([t for t, _ in facts], group_of)):
        for gid in gids:
            reasons = getattr(groups[gid], field_name)
            if reason not in reasons:
                reasons.append(reason)


def _freeze_units(groups: list[ChannelGroup], store: ElementStore, group_of: torch.Tensor,
                  unit_of: torch.Tensor) -> None:
    """Every unit holding a frozen element is frozen, in one scatter over all groups' units."""
    if not store.frozen or not groups:
        return
    flat = torch.cat([t for t, _ in store.frozen])
    offsets = torch.tensor([0] + [g.size for g in groups]).cumsum(0)
    mask = torch.zeros(int(offsets[-1]), dtype=torch.bool)
    mask[offsets[group_of[flat]] + unit_of[flat]] = True
    for g, start in zip(groups, offsets.tolist()):
        g.frozen_units |= mask[start:start + g.size]


def _attach_facts(traced, store, groups, group_of, unit_of) -> None:
    modules = dict(traced.gm.named_modules())
    if traced.module is not None:  # the model's own classes (torch.export keeps plain Modules)
        modules.update({k: v for k, v in traced.module.named_modules() if k})
    nodes = {nd.name: nd for nd in traced.gm.graph.nodes}
    _freeze_units(groups, store, group_of, unit_of)
    _add_reasons(groups, store.frozen, group_of, "frozen_reasons")
    _add_reasons(groups, store.inexact, group_of, "inexact_reasons")
    for (_, kind), gids in zip(store.tags, _groups_of_each([t for t, _ in store.tags], group_of)):
        for gid in gids:
            if kind.startswith("unit:"):
                groups[gid].unit = kind[5:]
            else:
                groups[gid].couplings.add(kind)
    seen: set[tuple[int, Member]] = set()
    for (_, member), gids in zip(store.members, _groups_of_each([t for t, _ in store.members], group_of)):
        qualname = _module_of(nodes.get(member.node), member)
        for gid in gids:
            g = groups[gid]
            if (gid, member) not in seen:
                seen.add((gid, member))
                g.members.append(member)
            if qualname is not None and qualname not in g.modules:
                g.modules.append(qualname)
                mod = modules.get(qualname)
                g.module_types.append(type(mod).__name__ if mod is not None else "Parameter")
    _attach_sites(store, groups, group_of, unit_of)


def _attach_sites(store, groups, group_of, unit_of) -> None:
    for site, gids in zip(store.sites, _groups_of_each([s.labels for s in store.sites], group_of)):
        for gid in gids:
            mine = (group_of[site.labels] == gid) & (site.labels != 0)
            unit_index = torch.where(mine, unit_of[site.labels], torch.full_like(site.labels, -1))
            groups[gid].gate_sites.append(GateSite(site.node, site.arg, site.dim, site.ndim, unit_index))
    for g in groups:
        widths = [int((s.unit_index == u).sum()) for s in g.gate_sites[:1] for u in range(min(g.size, 1))]
        g.unit_width = max(widths) if widths else 1
        if not g.gate_sites and not g.fully_frozen:
            g.frozen_units[:] = True
            g.frozen_reasons.append("its channels reach no layer that could drop them")


def _module_of(node: Optional[fx.Node], member: Member) -> Optional[str]:
    if node is None:
        return None
    if node.op == "call_module":
        return str(node.target)
    if node.op == "get_attr":
        return str(node.target).rpartition(".")[0] or str(node.target)
    return None
