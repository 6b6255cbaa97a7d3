"""``attach`` and ``finalize`` against ``analyze`` on the same model (the goal: each within 2x).

One process, one thread, 1 x 3 x 224 x 224; each round times analyze, attach (default policy)
and finalize (half of every gate vector switched off first, so the plan removes something),
rotating their order; each model's runs, medians and ratios are a record (``benchmarks/records.py``)
in ``benchmarks/results/attach_speed.json``; a rerun skips the models this commit has recorded.

    python benchmarks/attach_speed.py [--protocol docs|quick] [--models resnet50,densenet121] [--repeats 3]
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
from benchmarks import records  # noqa: E402
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


def _measure(model, inputs, repeats: int) -> dict[str, Any]:
    gated = G.attach(model, example_inputs=inputs, total_steps=100)  # warm-up
    _switch_off_half(gated)
    steps: dict[str, Callable[[], Any]] = {
        "analyze": lambda: G.analyze(model, inputs),
        "attach": lambda: G.attach(model, example_inputs=inputs, total_steps=100),
        "finalize": lambda: G.finalize(gated),
    }
    runs: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for r in range(repeats):
        for k in order[r % 3:] + order[:r % 3]:
            runs[k].append(_seconds(steps[k]))
    row: dict[str, Any] = {k: {"runs": [round(v, 3) for v in vs], "median_s": round(statistics.median(vs), 3)}
                           for k, vs in runs.items()}
    for k in ("attach", "finalize"):
        row[f"{k}_over_analyze"] = round(row[k]["median_s"] / row["analyze"]["median_s"], 3)
    return row


#: named settings; ``docs`` is what docs/benchmarks.md reports
PROTOCOLS = {"docs": {"repeats": 5, "models": "resnet50,densenet121,efficientnet_b0,vit_b_16"},
             "quick": {"repeats": 1, "models": "resnet50"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models")
    p.add_argument("--repeats", type=int)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attach_speed.json"))
    records.add_record_flags(p)
    args = records.parse_with_protocol(p, PROTOCOLS, "docs")
    torch.set_num_threads(1)
    for name in [n for n in args.models.split(",") if n]:
        settings = {"model": name, "input": [1, 3, 224, 224], "repeats": args.repeats}
        if not args.rerun and records.recorded(args.out, "attach_speed", settings):
            print(f"{name}: recorded by this commit, skipped (--rerun to time it again)")
            continue
        model, inputs = BENCH[name]()
        row = _measure(model, inputs, args.repeats)
        print(f"{name}: {json.dumps(row)}", flush=True)
        records.append_record(args.out, records.new_record("attach_speed", settings, row, note=args.note))
    print(f"records in {args.out}")


if __name__ == "__main__":
    main()
