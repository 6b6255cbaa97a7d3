"""Elements, their spaces, and what the rules say about them (a union-find plus event logs).

Rules never decide groups themselves: they create elements, union them, and record facts
(frozen, inexact, coupling kind, membership, gate sites). :mod:`gdp_graph.graph.analysis` turns the
final partition into :class:`~gdp_graph.graph.groups.ChannelGroup` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def connected_roots(parent: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The smallest element of each element's component, given a forest ``parent`` (every
    ``parent[x] <= x``) and extra ``edges`` (2 x k) to merge.

    Vectorized hooking and pointer jumping: each round points the larger root of every
    edge at the smaller one, then compresses every path, so a component's root is always its
    smallest element (the same answer as a sequential union-find that links larger roots
    under smaller ones), and the rounds needed grow with the log of the component size.
    """
    parent = _compress(parent.clone())
    if edges.numel() == 0:
        return parent
    a, b = edges[0], edges[1]
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not bool(differ.any()):
            return parent
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        parent.scatter_reduce_(0, torch.maximum(ra, rb), torch.minimum(ra, rb), reduce="amin")
        parent = _compress(parent)


def _compress(parent: torch.Tensor) -> torch.Tensor:
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand


@dataclass
class ElementStore:
    """Elements (numbered from 1; 0 is the null element), a union-find over them and the facts
    rules record.

    Unions are only recorded (as element pairs) while rules run; the partition is resolved in
    one vectorized pass when :meth:`roots` is asked for it, which no rule does.
    """

    count: int = 1  #: elements so far, the null element included (ids run from 0 to count - 1)
    spaces: list[Space] = field(default_factory=list)
    frozen: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    inexact: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    tags: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    members: list[tuple[torch.Tensor, Member]] = field(default_factory=list)
    sites: list[SiteRecord] = field(default_factory=list)
    divisors: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    uniform: list[tuple[torch.Tensor, int, str]] = field(default_factory=list)
    _pending: list[torch.Tensor] = field(default_factory=list, repr=False)
    _roots: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.long), repr=False)
    _starts: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long), repr=False)

    # -- creation and union -------------------------------------------------------------------
    def new_space(self, size: int, node: str, description: str) -> torch.Tensor:
        first = self.count
        space = Space(len(self.spaces), node, description, first, size)
        self.spaces.append(space)
        self.count += size  # an element's space is found by its first element (space_of_elements)
        return torch.arange(first, first + size, dtype=torch.long)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Union ``a[i]`` with ``b[i]`` position by position, skipping nulls (0)."""
        a, b = torch.broadcast_tensors(a, b)
        keep = (a != 0) & (b != 0)
        if bool(keep.any()):
            self._pending.append(torch.stack([a[keep], b[keep]]))

    def union_along(self, labels: torch.Tensor, keep_dim: int) -> torch.Tensor:
        """Union all elements that share an index along ``keep_dim``; return one label per index
        (its first non-null element, 0 where it has none)."""
        rows = labels.movedim(keep_dim, 0).reshape(labels.shape[keep_dim], -1)
        present = rows != 0
        if rows.shape[1] == 0:
            return torch.zeros(rows.shape[0], dtype=torch.long)
        first = rows.gather(1, present.to(torch.uint8).argmax(1, keepdim=True))
        self.union(first.expand_as(rows), rows)
        return first.squeeze(1)

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
        # kept as given, repeats included: groups are read from a presence table (one
        # ``unique`` per tag was a twentieth of a RegNet's analysis)
        flat = labels.reshape(-1)
        flat = flat[flat != 0]
        if flat.numel():
            self.tags.append((flat, kind))

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

    def space_starts(self) -> torch.Tensor:
        """The first element of every space, ascending (a space's id is its index), kept until
        a space is added: a residual add reads it to tell layers apart."""
        if self._starts.numel() != len(self.spaces):
            self._starts = torch.tensor([sp.first for sp in self.spaces], dtype=torch.long)
        return self._starts

    # -- results --------------------------------------------------------------------------------
    def space_of_elements(self) -> torch.Tensor:
        """The space id of every element (-1 for the null element), built from the spaces:
        a list grown element by element, then converted, cost 3 ms on a ConvNeXt-T."""
        sizes = torch.tensor([sp.size for sp in self.spaces], dtype=torch.long)
        ids = torch.repeat_interleave(torch.arange(len(self.spaces), dtype=torch.long), sizes)
        return torch.cat([torch.full((1,), -1, dtype=torch.long), ids])

    def roots(self) -> torch.Tensor:
        """Root (smallest element of its unit) of every element; index 0 is the null element."""
        grown = self.count - self._roots.numel()
        if grown or self._pending:
            parent = torch.cat([self._roots, torch.arange(self._roots.numel(), self.count, dtype=torch.long)])
            edges = torch.cat(self._pending, 1) if self._pending else torch.zeros(2, 0, dtype=torch.long)
            self._roots = connected_roots(parent, edges)
            self._pending.clear()
        return self._roots

    def find(self, x: int) -> int:
        return int(self.roots()[x])
