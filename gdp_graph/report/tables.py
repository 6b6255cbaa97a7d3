"""Terminal reports (rich): channel groups, opaque leaves, blocks, before/after figures."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from rich.console import Console
from rich.table import Table

from gdp_graph.graph.analysis import Analysis
from gdp_graph.report.console import styled
from gdp_graph.graph.groups import ChannelGroup


def _abbreviate(items: Sequence[str], keep: int = 3) -> str:
    shown = ", ".join(items[:keep])
    return shown + (f", … +{len(items) - keep}" if len(items) > keep else "")


def group_status(g: ChannelGroup) -> str:
    """'prunable', or why (part of) the group is frozen."""
    if g.fully_frozen:
        return f"frozen: {g.describe_frozen()}"
    if not g.exact:
        return f"frozen (inexact): {'; '.join(dict.fromkeys(g.inexact_reasons))}"
    n_frozen = int(g.frozen_units.sum())
    if n_frozen:
        return f"prunable ({n_frozen}/{g.size} units frozen: {g.describe_frozen()})"
    return "prunable"


def group_rows(analysis: Analysis, shares: Mapping[int, float]) -> list[dict[str, Any]]:
    return [{
        "group": g.id, "size": g.size, "unit": g.unit, "unit_width": g.unit_width,
        "members": g.modules, "couplings": sorted(g.couplings), "prunable": g.prunable and g.exact,
        "status": group_status(g), "flops_share": round(shares.get(g.id, 0.0), 6),
        "block": g.block,
    } for g in analysis.groups]


def groups_table(analysis: Analysis, shares: Mapping[int, float], gated: Optional[Mapping[int, str]] = None) -> Table:
    table = Table(title="Channel groups", header_style="bold", show_lines=False)
    table.add_column("id", justify="right")
    table.add_column("size", justify="right")
    table.add_column("unit")
    table.add_column("members")
    table.add_column("coupling")
    table.add_column("FLOPs", justify="right")  # share of FLOPs that shrink with the group
    if gated is not None:
        table.add_column("policy")
    table.add_column("status")
    for g in analysis.groups:
        status = group_status(g)
        style = "green" if status.startswith("prunable") else "dim"
        row = [str(g.id), str(g.size), g.unit if g.unit_width == 1 else f"{g.unit}×{g.unit_width}",
               _abbreviate(g.modules), ", ".join(sorted(g.couplings)) or "-",
               f"{100 * shares.get(g.id, 0.0):.1f}%"]
        if gated is not None:
            row.append(gated.get(g.id, "-"))
        row.append(status)
        table.add_row(*row, style=style)
    return table


def blocks_table(analysis: Analysis, gated: Optional[Mapping[int, str]] = None) -> Table:
    table = Table(title="Removable blocks (residual branches)", header_style="bold")
    table.add_column("id", justify="right")
    table.add_column("name")
    table.add_column("layers", justify="right")
    table.add_column("shortcut")
    if gated is not None:
        table.add_column("policy")
    table.add_column("status")
    for b in analysis.blocks:
        row = [str(b.id), b.name, str(len(b.modules)), "identity" if b.shortcut_is_identity else "projection"]
        if gated is not None:
            row.append(gated.get(b.id, "-"))
        row.append("removable" if b.prunable else "frozen: " + "; ".join(b.frozen_reasons))
        table.add_row(*row)
    return table


def opaque_table(analysis: Analysis) -> Table:
    table = Table(title="Opaque leaves (could not be traced; their channels are frozen)", header_style="bold")
    table.add_column("module")
    table.add_column("reason")
    for o in analysis.opaque:
        table.add_row(o.module, o.reason)
    return table


def print_inspect(console: Console, analysis: Analysis, shares: Mapping[int, float], *,
                  title: str, total_flops: float, total_params: int,
                  group_policy: Optional[Mapping[int, str]] = None,
                  block_policy: Optional[Mapping[int, str]] = None,
                  policy_notes: Sequence[str] = ()) -> None:
    prunable = len(analysis.prunable_groups())
    console.print(styled((title, "bold"), f": {len(analysis.groups)} channel groups, {prunable} prunable, "
                         f"{len(analysis.blocks)} removable blocks, {len(analysis.opaque)} opaque leaves; "
                         f"{total_params:,} params, {total_flops / 1e6:,.2f} MFLOPs per sample"))
    if analysis.traced.front_end != "fx":  # say when the graph is not the fx trace, and why
        console.print(f"front end: {analysis.traced.front_end} ({analysis.traced.front_end_reason})")
    console.print(groups_table(analysis, shares, group_policy))
    if analysis.blocks:
        console.print(blocks_table(analysis, block_policy))
    if analysis.opaque:
        console.print(opaque_table(analysis))
    for note in policy_notes:
        console.print(note, style="yellow")


def before_after_table(rows: Sequence[tuple[str, float, float, str]], title: str = "Before / after") -> Table:
    """Rows of (name, before, after, unit); the ratio column is after / before."""
    table = Table(title=title, header_style="bold")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("after/before", justify="right")
    for name, before, after, unit in rows:
        fmt = (lambda v: f"{v:,.0f}") if unit == "count" else (lambda v: f"{v:,.4g}")
        ratio = f"{after / before:.3f}" if before else "-"
        table.add_row(name, fmt(before), fmt(after), ratio)
    return table


def print_check(console: Console, result: Mapping[str, Any]) -> None:
    console.print(before_after_table([
        ("parameters", result["params_before"], result["params_after"], "count"),
        ("FLOPs per sample", result["flops_per_sample_before"], result["flops_per_sample_after"], "count"),
    ], title="check: random pruning, rewrite, verify"))
    verdict = ("verified: outputs equal", "green") if result["ok"] else ("OUTPUTS DIFFER", "red")
    console.print(styled(verdict, f" (max |diff| {result['max_abs_diff']:.3g}, "
                  f"relative {result['max_rel_diff']:.3g}, tolerance {result['tolerance']:g}); "
                  f"{result['groups_pruned']} groups pruned by {result['ratio']:g}; "
                  f"{len(result['removed_blocks'])} of {result['removable_blocks']} removable blocks removed "
                  f"(--blocks {result['block_ratio']:g}; --blocks 0 keeps them all)"))
    if result.get("plan_file"):
        console.print(f"plan written to {result['plan_file']} (re-apply it with 'gdp-graph apply')")
