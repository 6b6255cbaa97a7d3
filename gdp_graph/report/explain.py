"""Why a group's members are coupled: the chain of ops that carries its channels from one member
to another, read from the analysis' networkx graph (data-flow edges between fx nodes and
membership edges from each group), and, for a frozen group, the op that froze it and the path
that leads there.

The *coupling graph* of a group is the data-flow graph (as undirected: a residual add couples
its two inputs) restricted to the nodes whose tensors carry the group's channels, plus the
members that consume them. A shortest path in it is the shortest explanation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import networkx as nx
import torch

from gdp_graph.errors import GdpError
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.channels import Chan

__all__ = ["ExplainError", "Step", "coupling_graph", "coupling_path", "frozen_origins", "explain_group"]


class ExplainError(GdpError, ValueError):
    """The group or member asked about does not exist (the message lists what does)."""


@dataclass(frozen=True)
class Step:
    node: str
    op: str
    target: str
    module_type: Optional[str]
    role: str  #: the member role (produce, consume, param) or "carries"
    direction: str  #: "→" data flows from the previous step to this one, "←" the other way, "" first

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _carries(chan: Any, gid: int, group_of: torch.Tensor) -> bool:
    chans = chan if isinstance(chan, tuple) else (chan,)
    return any(isinstance(c, Chan) and any(bool((group_of[t.labels] == gid).any()) for t in c.tracks) for c in chans)


def member_nodes(analysis: Analysis, gid: int) -> dict[str, str]:
    """{fx node: role} of the group's members, read from the membership edges of ``analysis.graph``."""
    roles: dict[str, str] = {}
    for _, (kind, name), data in analysis.graph.out_edges(("group", gid), data=True):
        if kind == "node":
            roles.setdefault(name, data.get("kind", "member"))
    return roles


def coupling_graph(analysis: Analysis, gid: int) -> nx.Graph:
    """Undirected data-flow graph on the nodes carrying group ``gid`` and its members."""
    if not 0 <= gid < len(analysis.groups):
        raise ExplainError(f"group {gid} does not exist "
                           f"(groups 0..{len(analysis.groups) - 1}; see 'gdp-graph inspect')")
    carriers = {n.name for n in analysis.traced.gm.graph.nodes
                if _carries(analysis.chan(n), gid, analysis.group_of_element)}
    keep = {("node", name) for name in carriers | set(member_nodes(analysis, gid))}
    data_edges = [(u, v) for u, v, kind in analysis.graph.edges(data="kind")
                  if kind == "data" and u in keep and v in keep]
    graph = nx.Graph()
    graph.add_nodes_from(keep)
    graph.add_edges_from(data_edges)
    return graph


def _node_key(analysis: Analysis, name: str) -> tuple[str, str]:
    """A node name or a module qualified name -> the graph key of its fx node."""
    for n in analysis.traced.gm.graph.nodes:
        if n.name == name or (n.op in ("call_module", "get_attr") and str(n.target) == name):
            return ("node", n.name)
    raise ExplainError(f"no node or module named {name!r} in the traced model")


def _steps(analysis: Analysis, gid: int, path: list[tuple[str, str]]) -> list[Step]:
    roles = member_nodes(analysis, gid)
    modules = dict(analysis.traced.gm.named_modules())
    steps = []
    for i, key in enumerate(path):
        attrs = analysis.graph.nodes[key]
        name = key[1]
        direction = "" if i == 0 else ("→" if analysis.graph.has_edge(path[i - 1], key) else "←")
        module = modules.get(attrs.get("target", "")) if attrs.get("op") == "call_module" else None
        steps.append(Step(name, attrs.get("op", "?"), str(attrs.get("target", "")),
                          type(module).__name__ if module is not None else None, roles.get(name, "carries"), direction))
    return steps


def coupling_path(analysis: Analysis, gid: int, source: str, target: str) -> list[Step]:
    """The ops that carry group ``gid`` from ``source`` to ``target`` (node or module names)."""
    graph = coupling_graph(analysis, gid)
    a, b = _node_key(analysis, source), _node_key(analysis, target)
    for key, name in ((a, source), (b, target)):
        if key not in graph:
            raise ExplainError(f"{name!r} does not carry group {gid}'s channels")
    try:
        return _steps(analysis, gid, nx.shortest_path(graph, a, b))
    except nx.NetworkXNoPath:
        raise ExplainError(f"{source!r} and {target!r} are not connected through group {gid}") from None


_AT_NODE = re.compile(r" at node '([^']+)'")


def frozen_origins(analysis: Analysis, gid: int) -> list[dict[str, Any]]:
    """Each reason the group is (partly) frozen, with the op that froze it and the path from the
    group's first member to that op."""
    group = analysis.groups[gid]
    graph = coupling_graph(analysis, gid)
    members = list(member_nodes(analysis, gid))
    out = []
    for reason in list(group.frozen_reasons) + [f"inexact: {r}" for r in group.inexact_reasons]:
        match = _AT_NODE.search(reason)
        entry: dict[str, Any] = {"reason": reason, "node": match.group(1) if match else None, "path": []}
        key = ("node", entry["node"]) if match else None
        if key is not None and key in analysis.graph.nodes:
            attrs = analysis.graph.nodes[key]
            entry.update(op=attrs.get("op"), target=str(attrs.get("target")))
            graph.add_node(key)
            for u, v, kind in analysis.graph.edges(key, data="kind"):
                if kind == "data" and v in graph:
                    graph.add_edge(u, v)
            for u, v, kind in analysis.graph.in_edges(key, data="kind"):
                if kind == "data" and u in graph:
                    graph.add_edge(u, v)
            starts = [("node", m) for m in members if ("node", m) in graph]
            paths = [nx.shortest_path(graph, s, key) for s in starts if nx.has_path(graph, s, key)]
            if paths:
                entry["path"] = [s.to_dict() for s in _steps(analysis, gid, min(paths, key=len))]
                entry["path"][-1]["role"] = "freezes the group here"
        out.append(entry)
    return out


def explain_group(analysis: Analysis, gid: int, source: Optional[str] = None,
                  target: Optional[str] = None) -> dict[str, Any]:
    """Everything ``gdp-graph explain`` prints: the group, its members, one coupling path
    (between ``source`` and ``target``, default the two members farthest apart), and the
    origins of its frozen units."""
    graph = coupling_graph(analysis, gid)
    group = analysis.groups[gid]
    roles = member_nodes(analysis, gid)
    if source is None or target is None:
        # default: the two members farthest apart, the longest chain of coupling in the group
        members = [("node", m) for m in roles if ("node", m) in graph]
        best: Optional[tuple[int, tuple, tuple]] = None
        for a in members:
            reach = nx.single_source_shortest_path_length(graph, a)
            for b in members:
                if b != a and b in reach and (best is None or reach[b] > best[0]):
                    best = (reach[b], a, b)
        if best is not None:
            source, target = source or best[1][1], target or best[2][1]
    path = coupling_path(analysis, gid, source, target) if source and target else []
    return {"group": gid, "size": group.size, "unit": group.unit, "couplings": sorted(group.couplings),
            "prunable": group.prunable and group.exact, "status": group.describe_frozen() or "prunable",
            "members": [{"node": m.node, "target": m.target, "role": m.role, "dim": m.dim} for m in group.members],
            "path": {"from": source, "to": target, "steps": [s.to_dict() for s in path]},
            "frozen": frozen_origins(analysis, gid)}
