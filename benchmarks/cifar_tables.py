"""The CIFAR methods benchmark's tables, printed from its results file: the table of the ``run``
command's runs (``python benchmarks/cifar_methods.py table``) and the fair campaign's tuning and
final tables (``table --fair``, rows from :mod:`benchmarks.cifar_fair`), each with its verdict
lines: GDP's mean against the best other method's, called real only beyond twice the larger of
the two standard deviations."""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

try:
    from benchmarks.cifar_protocol import COMPETITORS, METHODS
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from cifar_protocol import COMPETITORS, METHODS

__all__ = ["all_runs", "cut_figure", "cut_table", "fair_table", "mean_std", "table", "tuning_table", "verdicts"]

#: the benchmark name of the ``run`` command's records
BENCHMARK = "cifar_methods"


def all_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run of the ``run`` command in a results file: those written before
    benchmarks/records.py (``runs``) and the results of its records (not the fair campaign's)."""
    return list(results.get("runs", [])) + [r["result"] for r in results.get("records", [])
                                            if r.get("benchmark") == BENCHMARK]


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _rows(runs: list[dict[str, Any]], keys: tuple[str, ...], chosen: dict[str, str] | None = None) -> list[str]:
    """One markdown row per (target, method): its setting when ``chosen`` is given, the number of
    seeds, then mean ± std of each of ``keys``."""
    out = []
    for target, method in _keys(runs):
        rs = [r for r in runs if r["target"] == target and r["method"] == method]
        setting = [] if chosen is None else [chosen.get(method, "-")]
        cells = [f"{target:g}", method, *setting, str(len(rs)), *(mean_std([r[k] for r in rs]) for k in keys)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def table(results: dict[str, Any], include_quick: bool = False) -> str:
    """The markdown table: one row per (target, method), mean ± std over seeds."""
    runs = [r for r in all_runs(results) if include_quick or not r.get("quick")]
    keys = ("acc_finalized", "acc_finetuned", "flops_kept", "params_kept", "acc_val")
    second = all("acc_heldout2" in r for r in runs) and bool(runs)  # runs with --heldout2-subset
    lines = ["| target | method | seeds | acc after cut | acc fine-tuned | FLOPs kept | params kept | acc held-out |"
             + (" acc held-out 2 |" if second else ""),
             "|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if second else ""),
             *_rows(runs, keys + (("acc_heldout2",) if second else ())),
             "", *verdicts(runs)]
    return "\n".join(lines)


def _keys(runs: Iterable[dict[str, Any]]) -> list[tuple[float, str]]:
    return sorted({(r["target"], r["method"]) for r in runs}, key=lambda k: (-k[0], METHODS.index(k[1])))


def verdicts(runs: list[dict[str, Any]], key: str = "acc_finetuned", label: str = "") -> list[str]:
    """Per target: GDP's mean ``key`` against the best other method's, called real only when the
    gap exceeds twice the larger of the two standard deviations (the protocol's rule); also
    whether every run landed within 0.01 of the target. ``label`` names the split in the line."""
    out = []
    for target in sorted({r["target"] for r in runs}, reverse=True):
        at = [r for r in runs if r["target"] == target and r.get(key) is not None]
        values = {m: [r[key] for r in at if r["method"] == m] for m in METHODS if any(r["method"] == m for r in at)}
        means = {m: statistics.mean(v) for m, v in values.items()}
        stds = {m: statistics.stdev(v) if len(v) > 1 else float("nan") for m, v in values.items()}
        landed = all(abs(r["flops_kept"] - target) <= 0.01 + 1e-9 for r in at)
        others = [m for m in means if m != "gdp" and m in COMPETITORS]
        if "gdp" not in means or not others:
            continue
        best = max(others, key=means.get)
        gap = means["gdp"] - means[best]
        bound = 2 * max(stds["gdp"], stds[best])
        if math.isnan(bound):
            call = "no call (a single seed)"
        else:
            call = "not real (within twice the spread)" if abs(gap) <= bound else ("GDP wins" if gap > 0 else f"{best} wins")
        out.append(f"- target {target:g}{label}: gdp {means['gdp']:.4f} vs best other ({best}) {means[best]:.4f}: "
                   f"{100 * gap:+.2f} points, twice the spread {100 * bound:.2f}: {call}; "
                   f"every run within 0.01 of the target: {'yes' if landed else 'no'}")
    return out


def tuning_table(rows: list[dict[str, Any]]) -> str:
    """The tuning stage: one row per (method, setting) with its ``acc_val`` (the only column the
    choice reads) and FLOPs kept; ``rows`` carry ``method``, ``setting``, ``chosen`` and ``run``
    (None while not yet run)."""
    lines = ["| method | setting | acc_val | FLOPs kept | chosen |", "|---|---|---:|---:|:---:|"]
    for row in rows:
        run = row["run"]
        val, flops = ("-", "-") if run is None else (f"{run['acc_val']:.4f}", f"{run['flops_kept']:.4f}")
        lines.append(f"| {row['method']} | {row['setting']} | {val} | {flops} | {'yes' if row['chosen'] else ''} |")
    return "\n".join(lines)


def _images(r: range) -> str:
    return f"training images {r.start:,}-{r.stop - 1:,}"


def fair_table(runs: list[dict[str, Any]], chosen: dict[str, str], commit: str, ranges: dict[str, range]) -> str:
    """The final stage: one row per (target, method) at the method's chosen setting, mean ± std
    over seeds on the split no selection read (``acc_heldout2``) and on the test set, then the
    verdict lines on both. ``ranges``: the splits (``cifar_protocol.split_ranges``)."""
    lines = [f"Records of commit {commit[:12]}; settings chosen on acc_val ({_images(ranges['val'])}) at "
             f"target 0.5, seed 0; acc held-out 2 is {_images(ranges['heldout2'])}, which no choice read.", "",
             "| target | method | setting | seeds | acc held-out 2 | acc test | FLOPs kept | acc_val |",
             "|---:|---|---|---:|---:|---:|---:|---:|",
             *_rows(runs, ("acc_heldout2", "acc_finetuned", "flops_kept", "acc_val"), chosen),
             "", *verdicts(runs, "acc_heldout2", " (held-out 2)"), *verdicts(runs, "acc_finetuned", " (test)")]
    return "\n".join(lines)


#: the points of the gate window where the cut table reads the soft kept fraction
WINDOW_POINTS = (0.25, 0.5, 0.75)


def _soft_at(run: dict[str, Any], point: float) -> float:
    """The soft kept FLOPs fraction at ``point`` (0-1] of the steps before the cut."""
    steps = run["steps"]
    return steps[max(0, round(point * len(steps)) - 1)][1]


def _count_mean_std(values: list[int]) -> str:
    if len(values) == 1:
        return str(values[0])
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _cut_rows(runs: list[dict[str, Any]]) -> list[str]:
    out = []
    for target, method in _keys(runs):
        rs = [r for r in runs if r["target"] == target and r["method"] == method and r.get("fix") and r.get("steps")]
        if not rs:
            continue
        fix = [r["fix"] for r in rs]
        cells = [f"{target:g}", method, str(len(rs)), str(rs[0]["fix"]["step"]),
                 *(mean_std([_soft_at(r, p) for r in rs]) for p in WINDOW_POINTS),
                 mean_std([f["soft_before"] for f in fix]), mean_std([f["hard_before"] for f in fix]),
                 mean_std([f["fraction"] for f in fix]),
                 mean_std([abs(f["hard_before"] - f["fraction"]) for f in fix]),
                 _count_mean_std([f["cut_units"] for f in fix]), mean_std([r["steps"][-1][2] for r in rs])]
        out.append("| " + " | ".join(cells) + " |")
    return out


def cut_table(runs: list[dict[str, Any]], commit: str) -> str:
    """What the gates had decided when they were cut, per (target, gate method), mean ± std over
    seeds: the soft kept FLOPs fraction at a quarter, half and three quarters of the gate window
    and just before the cut; the hard fraction (gates above 0.5) there; the fraction the cut kept
    (the budget); how far the cut moved the hard fraction (0: the cut only confirmed the gates);
    the units it removed; and lambda at the cut."""
    head = " | ".join(f"soft at {p:g}" for p in WINDOW_POINTS)
    lines = [f"Gate trajectories of the final stage (records of commit {commit[:12]}); fractions of the FLOPs.", "",
             f"| target | method | seeds | cut at step | {head} | soft before cut | hard before cut | kept by cut | "
             "cut moved | units cut | lambda at cut |",
             "|---:|---|---:|---:|" + "---:|" * (len(WINDOW_POINTS) + 6), *_cut_rows(runs)]
    return "\n".join(lines)


def cut_figure(runs: list[dict[str, Any]], path: str) -> None:
    """The soft kept FLOPs fraction over the gate window, one panel per target, the mean over
    seeds of each gate method (the seeds' range shaded), the target as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gated = [r for r in runs if r.get("steps")]
    targets = sorted({r["target"] for r in gated}, reverse=True)
    fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 3.8), squeeze=False, sharey=True)
    for ax, target in zip(axes[0], targets):
        for _, method in [k for k in _keys(gated) if k[0] == target]:
            rs = [r for r in gated if r["target"] == target and r["method"] == method]
            n = min(len(r["steps"]) for r in rs)
            step = [s[0] for s in rs[0]["steps"][:n]]
            soft = [[r["steps"][i][1] for r in rs] for i in range(n)]
            line, = ax.plot(step, [statistics.mean(v) for v in soft], label=f"{method} ({len(rs)} seeds)")
            ax.fill_between(step, [min(v) for v in soft], [max(v) for v in soft], color=line.get_color(), alpha=0.2)
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        ax.set(title=f"target {target:g} of the FLOPs", xlabel="gate step (the cut follows the last)",
               ylim=(0, 1.02))
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("soft kept fraction of the FLOPs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
