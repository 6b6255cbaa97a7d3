"""Elements, their spaces, and what the rules say about them (a union-find plus event logs).

Rules never decide groups themselves: they create elements, union them, and record facts
(frozen, inexact, coupling kind, membership, gate sites). :mod:`gdp_graph.graph.analysis` turns the
final partition into :class:`~gdp_graph.graph.groups.ChannelGroup` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from gdp_graph.graph.groups import Member


@dataclass
class Space:
    """A batch of elements created together (one conv's output channels, one parameter dim)."""

    id: int
    node: str
    description: str
    first: int
    size: int


@dataclass
class SiteRecord:
    node: str
    arg: int
    dim: int
    ndim: int
    labels: torch.Tensor  #: one label per position along ``dim``


@dataclass
class ElementStore:
    parent: list[int] = field(default_factory=lambda: [0])
    space_of: list[int] = field(default_factory=lambda: [-1])
    spaces: list[Space] = field(default_factory=list)
    frozen: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    inexact: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    tags: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    members: list[tuple[torch.Tensor, Member]] = field(default_factory=list)
    sites: list[SiteRecord] = field(default_factory=list)
    divisors: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    uniform: list[tuple[torch.Tensor, int, str]] = field(default_factory=list)

    # -- creation and union -------------------------------------------------------------------
    def new_space(self, size: int, node: str, description: str) -> torch.Tensor:
        first = len(self.parent)
        space = Space(len(self.spaces), node, description, first, size)
        self.spaces.append(space)
        self.parent.extend(range(first, first + size))
        self.space_of.extend([space.id] * size)
        return torch.arange(first, first + size, dtype=torch.long)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Union ``a[i]`` with ``b[i]`` position by position, skipping nulls (0)."""
        a, b = torch.broadcast_tensors(a, b)
        keep = (a != 0) & (b != 0)
        pairs = torch.stack([a[keep], b[keep]], 1)
        if pairs.numel() == 0:
            return
        pairs = torch.unique(pairs, dim=0)
        for x, y in pairs.tolist():
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def union_all(self, labels: torch.Tensor) -> None:
        """Make every non-null element of ``labels`` one unit."""
        flat = labels.reshape(-1)
        flat = torch.unique(flat[flat != 0])
        if flat.numel() > 1:
            self.union(flat[:1].expand(flat.numel() - 1), flat[1:])

    def union_along(self, labels: torch.Tensor, keep_dim: int) -> torch.Tensor:
        """Union all elements that share an index along ``keep_dim``; return one label per index."""
        moved = labels.movedim(keep_dim, 0).reshape(labels.shape[keep_dim], -1)
        out = torch.zeros(moved.shape[0], dtype=torch.long)
        for i, row in enumerate(moved):
            self.union_all(row)
            present = row[row != 0]
            if present.numel():
                out[i] = present[0]
        return out

    # -- facts ----------------------------------------------------------------------------------
    def freeze(self, labels: torch.Tensor, reason: str) -> None:
        flat = labels.reshape(-1)
        flat = flat[flat != 0]
        if flat.numel():
            self.frozen.append((flat.clone(), reason))

    def mark_inexact(self, labels: torch.Tensor, reason: str) -> None:
        flat = labels.reshape(-1)
        flat = flat[flat != 0]
        if flat.numel():
            self.inexact.append((flat.clone(), reason))

    def tag(self, labels: torch.Tensor, kind: str) -> None:
        flat = labels.reshape(-1)
        flat = flat[flat != 0]
        if flat.numel():
            self.tags.append((torch.unique(flat), kind))

    def add_member(self, labels: torch.Tensor, member: Member) -> None:
        self.members.append((labels.reshape(-1).clone(), member))

    def add_site(self, node: str, arg: int, dim: int, ndim: int, labels: torch.Tensor) -> None:
        if bool((labels != 0).any()):
            self.sites.append(SiteRecord(node, arg, dim, ndim, labels.reshape(-1).clone()))

    def require_uniform(self, labels: torch.Tensor, dim: int, where: str) -> None:
        """Units must not lie along ``dim`` of this joint track (its size must not change)."""
        self.uniform.append((labels.clone(), dim, where))

    def require_divisor(self, labels: torch.Tensor, divisor: int) -> None:
        self.divisors.append((labels.reshape(-1).clone(), divisor))

    # -- results --------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self.parent)

    def roots(self) -> torch.Tensor:
        """Root of every element (index 0 is the null element)."""
        return torch.tensor([self.find(i) for i in range(self.count)], dtype=torch.long)

    def space(self, element: int) -> Optional[Space]:
        sid = self.space_of[element]
        return self.spaces[sid] if sid >= 0 else None
