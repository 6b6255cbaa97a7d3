"""Pictures of a GDP run (matplotlib, the ``plot`` extra): how the gates polarize over training
and how lambda steers the kept fraction to the target."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from gdp_graph.errors import GdpError


class PlotError(GdpError, RuntimeError):
    """A picture cannot be drawn (matplotlib missing, or nothing recorded)."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("pictures need matplotlib: pip install 'gdp-graph[plot]'") from None
    matplotlib.use("Agg", force=False)  # files only; never open a window
    import matplotlib.pyplot as plt
    return plt


def _cut_index(history: Mapping[str, Any]) -> int | None:
    """The first snapshot after the gates were cut (the first with gates at exactly 0), if any."""
    return next((i for i, zeros in enumerate(history.get("zero_gates") or ()) if zeros and i > 0), None)


def _mark_cut(ax: Any, history: Mapping[str, Any]) -> None:
    cut = _cut_index(history)
    if cut is not None:
        ax.axvline(history["step"][cut], color="tab:gray", linestyle=":", label=f"cut (step {history['step'][cut]})")


def plot_gate_histograms(history: Mapping[str, Any], path: str | Path, bins: int = 25) -> Path:
    """Gate values over training: a step x value heat map of histogram counts (log colour;
    each snapshot drawn from its step to the next, the cut dotted), and the histograms of the
    first snapshot, the last one before the cut and the last one side by side."""
    import numpy as np
    plt = _pyplot()
    snapshots: Sequence[Sequence[float]] = history["gates"]
    steps: Sequence[int] = history["step"]
    if not snapshots or not any(len(s) for s in snapshots):
        raise PlotError("no gate values were recorded")
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.stack([np.histogram(np.clip(s, 0, 1), bins=edges)[0] for s in snapshots], axis=1)
    fig, (heat, ends) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    x = np.append(np.asarray(steps, dtype=float), steps[-1] + 1.0)  # snapshots are not evenly spaced
    image = heat.pcolormesh(x, edges, np.log10(1 + counts), cmap="magma", shading="flat")
    _mark_cut(heat, history)
    heat.set_xlabel("training step")
    heat.set_ylabel("gate value")
    heat.set_title("gate values over the gated phase (polarization)")
    if _cut_index(history) is not None:
        heat.legend(loc="center right", fontsize="small")
    fig.colorbar(image, ax=heat, label="log10(1 + units)")
    centers = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    cut = _cut_index(history)
    shown = [0] + ([cut - 1] if cut is not None and cut - 1 > 0 else []) + [len(steps) - 1]
    for i, name in zip(shown, ("first", "before the cut", "last") if len(shown) == 3 else ("first", "last")):
        ends.bar(centers, counts[:, i], width=width, alpha=0.5, label=f"step {steps[i]} ({name})")
    ends.set_yscale("log")
    ends.set_xlabel("gate value")
    ends.set_ylabel("units")
    ends.set_title("first, before the cut, last" if len(shown) == 3 else "first and last")
    ends.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trajectory(history: Mapping[str, Any], path: str | Path, tolerance: float = 0.0) -> Path:
    """Lambda (log scale) and the kept fraction of the budget metric (hard count and soft cost)
    against the target over the gated phase."""
    plt = _pyplot()
    steps = history["step"]
    if not steps:
        raise PlotError("nothing was recorded")
    fig, kept = plt.subplots(figsize=(9, 4))
    metric, target = history.get("metric", "flops"), history.get("target", 1.0)
    kept.plot(steps, history["hard_fraction"], label=f"{metric} kept (gates > 0.5)", color="tab:blue")
    kept.plot(steps, history["soft_fraction"], label=f"{metric} kept (soft, from gate values)", color="tab:blue",
              linestyle="--")
    kept.axhline(target, color="tab:green", label=f"target {target:g}")
    if tolerance:
        kept.axhspan(target - tolerance, target + tolerance, color="tab:green", alpha=0.15)
    _mark_cut(kept, history)
    kept.set_ylim(0, 1.05)
    kept.set_xlabel("training step")
    kept.set_ylabel(f"fraction of {metric} kept")
    lam = kept.twinx()
    lam.plot(steps, history["lam"], color="tab:red", label="lambda")
    if min(history["lam"]) > 0:
        lam.set_yscale("log")
    lam.set_ylabel("lambda", color="tab:red")
    lines = kept.get_legend_handles_labels()
    more = lam.get_legend_handles_labels()
    kept.legend(lines[0] + more[0], lines[1] + more[1], loc="lower left", fontsize="small")
    kept.set_title("budget: lambda steers the kept fraction to the target")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
