"""``attach`` and ``finalize`` against ``analyze`` on the same model (the goal: each within 2x).

One process, one thread, 1 x 3 x 224 x 224; each round times analyze, attach (default policy)
and finalize (half of every gate vector switched off first, so the plan removes something),
rotating their order; the JSON in ``benchmarks/results/`` keeps the runs, medians and ratios.

    python benchmarks/attach_speed.py [--models resnet50,densenet121] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import gdp_graph as G  # noqa: E402
from benchmarks.analysis_speed import machine  # noqa: E402
from benchmarks.models import BENCH  # noqa: E402


def _switch_off_half(gated) -> None:
    """Zero the first half of every channel gate vector (as trained gates would be)."""
    with torch.no_grad():
        for p in gated.gate_parameters():
            if p.dim() == 1 and p.numel() > 1:
                p[: p.numel() // 2] = 0.0


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,densenet121,efficientnet_b0,vit_b_16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attach_speed.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for name in [n for n in args.models.split(",") if n]:
        model, inputs = BENCH[name]()
        gated = G.attach(model, example_inputs=inputs, total_steps=100)  # warm-up
        _switch_off_half(gated)
        steps: dict[str, Callable[[], Any]] = {
            "analyze": lambda: G.analyze(model, inputs),
            "attach": lambda: G.attach(model, example_inputs=inputs, total_steps=100),
            "finalize": lambda: G.finalize(gated),
        }
        runs: dict[str, list[float]] = {k: [] for k in steps}
        order = list(steps)
        for r in range(args.repeats):
            for k in order[r % 3:] + order[:r % 3]:
                runs[k].append(_seconds(steps[k]))
        row: dict[str, Any] = {k: {"runs": [round(v, 3) for v in vs], "median_s": round(statistics.median(vs), 3)}
                               for k, vs in runs.items()}
        for k in ("attach", "finalize"):
            row[f"{k}_over_analyze"] = round(row[k]["median_s"] / row["analyze"]["median_s"], 3)
        results[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    report = {"benchmark": "attach_speed", "input": [1, 3, 224, 224], "repeats": args.repeats,
              "machine": machine(), "models": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
