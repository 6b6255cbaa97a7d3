"""Markdown tables for the performance section of docs/benchmarks.md, from the JSON in ``benchmarks/results/``.

    python benchmarks/performance_tables.py [--section analysis|latency|attach] [--compact]
        [--latency benchmarks/results/latency_pruned_b1.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(RESULTS.parents[1]))

from benchmarks import records  # noqa: E402


def _load(path: Path) -> Optional[dict[str, Any]]:
    """A table's worth of one results file: its last run of records (``benchmarks/records.py``)
    in the shape of the reports written before records (``models``, ``machine``, ...), or such
    an older report as written."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not data.get("records"):
        return data
    benchmark = data["records"][-1]["benchmark"]
    run = records.latest_run(path, benchmark)
    rec, settings = run["record"], run["record"]["settings"]
    return {**{k: v for k, v in settings.items() if k != "model"}, "benchmark": benchmark,
            "machine": {**rec["machine"], "date": rec["date"]}, "models": run["rows"], "note": rec.get("note"),
            "gdp_graph_commit": settings.get("gdp_graph_commit") or (rec["commit"] or "?")[:7]}


def _report_before_records(path: Path) -> Optional[dict[str, Any]]:
    """The report a results file held before its first record was appended to it (kept beside
    the records), or None."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k != "records"} if data.get("records") and "models" in data else None


def _when(result: dict[str, Any]) -> str:
    """Date, commit and note of a run, for a table's title."""
    parts = [result["machine"].get("date", "?")[:10]]
    if result.get("gdp_graph_commit"):
        parts.append(f"commit {result['gdp_graph_commit']}")
    if result.get("note"):
        parts.append(result["note"])
    return ", ".join(parts)


def _s(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}"


def _spread(side: dict[str, Any]) -> str:
    if side.get("median_s") is None:
        return "no result"
    return f"{side['median_s']:.2f} ({side['min_s']:.2f}–{side['max_s']:.2f})"


def analysis_table(after: dict[str, Any], before: Optional[dict[str, Any]],
                   previous: Optional[dict[str, Any]] = None) -> str:
    """``before``: the code before any performance work; ``previous``: the last committed
    measurement (its ratio to Torch-Pruning shown too), ``after``: now."""
    m = after["machine"]
    mid = [f"previous ({previous.get('gdp_graph_commit', '?')})", "previous / Torch-Pruning"] if previous else []
    lines = [f"Analysis (trace + groups + blocks), seconds, median (min–max) of {after['repeats']}, "
             f"{after['input'][0]}x3x224x224, {m['threads']} thread, torch {m['torch']}, "
             f"Torch-Pruning {after['torch_pruning']}, {m['date'][:10]}, commit {after.get('gdp_graph_commit', '?')}:", "",
             "| model | elements | gdp-graph before | " + "".join(f"{h} | " for h in mid)
             + "gdp-graph now | Torch-Pruning | now / Torch-Pruning |",
             "|---|---:|---:|" + "---:|" * len(mid) + "---:|---:|---:|"]
    for name, r in after["models"].items():
        old = before["models"].get(name, {}).get("gdp_graph", {}) if before else {}
        peer = r.get("torch_pruning", {})
        ratio = r.get("ours_over_theirs")
        cells = ""
        if previous:
            p = previous["models"].get(name, {})
            cells = f"{_spread(p['gdp_graph']) if p else '—'} | {_s(p.get('ours_over_theirs'))} | "
        lines.append(f"| {name} | {r['elements']:,} | {_spread(old) if old else '—'} | {cells}{_spread(r['gdp_graph'])} "
                     f"| {_spread(peer) if peer else '—'} | {_s(ratio)} |")
    ratios = sorted(r["ours_over_theirs"] for r in after["models"].values() if r.get("ours_over_theirs"))
    if ratios:
        median = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
        lines += ["", f"Median of now / Torch-Pruning: {median:.2f}, highest {ratios[-1]:.2f} (below 1: gdp-graph "
                  "faster; the goal is a median of at most 0.5 and none above 1)."]
    return "\n".join(lines)


def latency_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Latency of the rewritten model against the eager original, batch {result['input'][0]}, "
             f"{m['threads']} thread, median of {result['rounds']} alternating rounds "
             "(speed-up: median over rounds of original time / rewritten time, measured in adjacent pairs; "
             "per FLOPs = speed-up / FLOPs ratio):", "",
             "| model | plan | FLOPs ratio | speed-up | per FLOPs | original ms | rewritten ms (min–max) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in result["models"].items():
        for label, row in r["plans"].items():
            rw = row["rewritten"]
            lines.append(f"| {name} | {label} | {row['flops_speedup']:.2f} | {row['speedup_paired']:.3f} | "
                         f"{row['speedup_per_flops']:.2f} | {row['original']['median_ms']:.1f} | "
                         f"{rw['median_ms']:.1f} ({rw['min_ms']:.1f}–{rw['max_ms']:.1f}) |")
    return "\n".join(lines)


def latency_compact(result: dict[str, Any]) -> str:
    """One row per model: each plan as FLOPs ratio / measured speed-up (speed-up per FLOPs)."""
    plans = list(next(iter(result["models"].values()))["plans"])
    lines = [f"Rewritten vs eager, batch {result['input'][0]}, one thread, {_when(result)}; each cell: FLOPs ratio / "
             "measured speed-up (speed-up ÷ FLOPs ratio):", "",
             "| model | " + " | ".join(plans) + " |", "|---|" + "---:|" * len(plans)]
    for name, r in result["models"].items():
        cells = []
        for label in plans:
            row = r["plans"][label]
            cells.append(f"{row['flops_speedup']:.2f} / {row['speedup_paired']:.2f} ({row['speedup_per_flops']:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attach_table(result: dict[str, Any]) -> str:
    lines = [f"attach and finalize against analyze, seconds, median of {result['repeats']}, {_when(result)}:", "",
             "| model | analyze | attach | finalize | attach / analyze | finalize / analyze |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["models"].items():
        lines.append(f"| {name} | {r['analyze']['median_s']:.2f} | {r['attach']['median_s']:.2f} | "
                     f"{r['finalize']['median_s']:.2f} | {r['attach_over_analyze']:.2f} | {r['finalize_over_analyze']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--after", default=str(RESULTS / "analysis_speed.json"))
    p.add_argument("--before", default=str(RESULTS / "analysis_speed_before.json"))
    p.add_argument("--previous", default=str(RESULTS / "analysis_speed_previous.json"))
    p.add_argument("--latency", nargs="*", default=sorted(str(f) for f in RESULTS.glob("latency_pruned_*.json")))
    p.add_argument("--attach", default=str(RESULTS / "attach_speed.json"))
    p.add_argument("--compact", action="store_true", help="one latency row per model")
    p.add_argument("--section", choices=("analysis", "latency", "attach"), help="print only this table")
    args = p.parse_args()
    printed = []
    after = _load(Path(args.after))
    if after and args.section in (None, "analysis"):
        # "previous": the measurement the records were appended to, else the previous file's
        previous = _report_before_records(Path(args.after)) or _load(Path(args.previous))
        printed.append(analysis_table(after, _load(Path(args.before)), previous))
    for path in args.latency if args.section in (None, "latency") else ():
        printed.append((latency_compact if args.compact else latency_table)(_load(Path(path))))
    attach = _load(Path(args.attach))
    if attach and args.section in (None, "attach"):
        printed.append(attach_table(attach))
    print("\n\n".join(printed))


if __name__ == "__main__":
    main()
