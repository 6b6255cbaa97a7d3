"""The tables ``gdp-graph train`` prints at the end of a run, from its report."""

from __future__ import annotations

from typing import Any

from rich.console import Console

__all__ = ["print_report"]


def print_report(console: Console, r: dict[str, Any]) -> None:
    """The tables at the end of a run: cost before / after, accuracies, other methods, gates."""
    from rich.table import Table

    from gdp_graph.report.tables import before_after_table
    console.print(before_after_table([
        ("parameters", r["params_before"], r["params_after"], "count"),
        ("FLOPs", r["flops_before"], r["flops_after"], "count"),
        ("CPU latency, batch 64 (ms)", 1e3 * r["latency_before_s"], 1e3 * r["latency_after_s"], "value"),
    ], title="GDP on CIFAR-10: before / after"))
    acc = Table(title="Top-1 accuracy", header_style="bold",
                caption=None if r["gated_epochs"] == r["settings"]["gdp_epochs"] else
                f"gated and finalized: when finalized, after GDP epoch {r['gated_epochs']} of "
                f"{r['settings']['gdp_epochs']} (the finalized model trains the rest)")
    cols = {"pretrained": "acc_pretrained", "gated": "acc_gated", "finalized": "acc_finalized",
            "fine-tuned": "acc_finetuned", "unpruned, same epochs": "acc_unpruned_same_epochs"}
    acc.add_column("split")
    for col in cols:
        acc.add_column(col, justify="right")
    acc.add_row("test", *(f"{r[k]:.4f}" if k in r else "-" for k in cols.values()))
    held = dict(r.get("heldout", {}))
    if held:  # gated and finalized are equal by construction: evaluated once, as finalized
        held.setdefault("acc_gated", held.get("acc_finalized"))
        acc.add_row("held-out", *(f"{held[k]:.4f}" if held.get(k) is not None else "-" for k in cols.values()))
    console.print(acc)
    if r.get("compare"):
        other = Table(title="The same command, other methods (fine-tuned top-1)", header_style="bold")
        for col in ("method", "test", "held-out", "FLOPs kept", "units cut"):
            other.add_column(col, justify="left" if col == "method" else "right")
        rows = {r["regularizer"]: {"acc_finetuned": r.get("acc_finetuned"), "kept": r.get("kept"),
                                   "heldout_acc_finetuned": held.get("acc_finetuned"),
                                   "removed_by_group": r.get("finalize", {}).get("removed_by_group")}, **r["compare"]}
        for method, c in rows.items():
            cut = c.get("removed_by_group")
            # how many units for the same FLOPs: a method cutting many cheap units or few costly ones
            other.add_row(method, *(f"{c[k]:.4f}" if c.get(k) is not None else "-"
                                    for k in ("acc_finetuned", "heldout_acc_finetuned", "kept")),
                          "-" if cut is None else str(sum(cut.values())))
        console.print(other)
    gates = r.get("gates", {})
    if gates:
        console.print("gates: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in gates.items() if not isinstance(v, (list, dict))))
    console.print(f"wall time {r['wall_seconds']:.0f}s on {r['device']}")
