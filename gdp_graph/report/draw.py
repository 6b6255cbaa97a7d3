"""A drawing of the channel groups on the model graph (networkx layout, matplotlib; the
``plot`` extra): one box per fx node, in data-flow order left to right, coloured by the group
its output channels belong to; frozen groups drawn with a red edge."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import networkx as nx

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.channels import Chan
from gdp_graph.report.plots import PlotError, _pyplot

__all__ = ["draw_groups", "output_group"]


def output_group(analysis: Analysis, node) -> Optional[int]:
    """The group most of a node's output channels belong to (None: untracked)."""
    chan = analysis.chan(node)
    chan = chan[0] if isinstance(chan, tuple) and chan else chan
    if not isinstance(chan, Chan) or not chan.tracks:
        return None
    groups = analysis.group_of_element[chan.tracks[0].labels.flatten()]
    counts = Counter(int(g) for g in groups.tolist() if g >= 0)
    return counts.most_common(1)[0][0] if counts else None


def draw_groups(analysis: Analysis, path: str | Path) -> Path:
    """Write the drawing to ``path`` (``.svg`` or ``.png``) and return it."""
    path = Path(path)
    if path.suffix.lower() not in (".svg", ".png"):
        raise PlotError(f"--draw {path}: the file must end in .svg or .png")
    plt = _pyplot()
    flow = nx.DiGraph()
    nodes = {n.name: n for n in analysis.traced.gm.graph.nodes}
    for u, v, kind in analysis.graph.edges(data="kind"):
        if kind == "data" and u[0] == "node" and v[0] == "node":
            flow.add_edge(u[1], v[1])
    flow.add_nodes_from(nodes)
    for depth, generation in enumerate(nx.topological_generations(flow)):
        for name in generation:
            flow.nodes[name]["depth"] = depth
    pos = nx.multipartite_layout(flow, subset_key="depth")
    depth = 1 + max(d for _, d in flow.nodes(data="depth"))
    width = max(Counter(d for _, d in flow.nodes(data="depth")).values())
    fig, ax = plt.subplots(figsize=(min(4 + 0.9 * depth, 200), min(3 + 0.8 * width, 60)))
    palette = plt.get_cmap("tab20")
    groups = {name: output_group(analysis, node) for name, node in nodes.items()}
    colours = [palette(groups[n] % 20) if groups[n] is not None else (0.85, 0.85, 0.85, 1.0) for n in flow.nodes]
    frozen = [groups[n] is not None and not (analysis.groups[groups[n]].prunable and analysis.groups[groups[n]].exact)
              for n in flow.nodes]
    nx.draw_networkx_edges(flow, pos, ax=ax, arrows=True, arrowsize=8, edge_color="0.6", node_size=900)
    nx.draw_networkx_nodes(flow, pos, ax=ax, node_color=colours, node_size=900, node_shape="s",
                           edgecolors=["red" if f else "black" for f in frozen],
                           linewidths=[2.0 if f else 0.5 for f in frozen])
    labels = {}
    for name, node in nodes.items():
        label = str(node.target) if node.op in ("call_module", "get_attr") else name
        labels[name] = label if groups[name] is None else f"{label}\ng{groups[name]}"
    nx.draw_networkx_labels(flow, pos, labels, ax=ax, font_size=6)
    shown = sorted({g for g in groups.values() if g is not None})
    groups_shown = [analysis.groups[g] for g in shown[:40]]
    handles = [plt.Line2D([], [], marker="s", linestyle="", markersize=8, color=palette(g.id % 20),
                          markeredgecolor="red" if not (g.prunable and g.exact) else "black",
                          label=f"group {g.id} ({g.size} {g.unit}s)") for g in groups_shown]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small",
                  title="output channels (red edge: frozen)")
    ax.set_title(f"channel groups on the model graph: {len(analysis.groups)} groups, "
                 f"{len(analysis.prunable_groups())} prunable")
    ax.axis("off")
    fig.tight_layout()
    with plt.rc_context({"svg.fonttype": "none"}):  # real, searchable text in the SVG
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
