"""Latency of rewritten models against the eager original, next to what their FLOPs predict.

For each convolutional benchmark model (224 px, one thread): the model rewritten with a plan
that removes nothing (it should cost nothing for being rewritten), and pruned at 30% and 50%
of every prunable group's free units, each with and without ``round_to 8`` (kept channel counts
multiples of 8). Original and rewritten models run in one process, alternating; each model's
record (``benchmarks/records.py``, in ``benchmarks/results/latency_pruned_b<batch>.json``) keeps
every round's median per call, the medians, the spread and the ratios: ``speedup`` (original
time / pruned time, of the medians; ``speedup_paired``: the median of each round's ratio, ``speedup_min``: of the fastest calls), ``flops_speedup`` (original FLOPs /
pruned FLOPs) and ``speedup_per_flops`` = speedup_paired / flops_speedup (1.0: as fast as the
FLOPs say).

    python benchmarks/latency_pruned.py [--protocol b1|b16] [--models resnet50,...] [--batch 1] [--rounds 5]
        [--out FILE] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.benchmark import Timer  # noqa: E402

import gdp_graph as G  # noqa: E402
from benchmarks import records  # noqa: E402
from benchmarks.models import BENCH, CNNS  # noqa: E402
from gdp_graph.graph.cost import model_cost  # noqa: E402


def ratio_plan(analysis, ratio: float, round_to: int = 1, seed: int = 0) -> G.PruningPlan:
    """Remove ``ratio`` of every prunable exact group's units (random ones, never frozen),
    keeping a channel count that is a multiple of ``round_to`` (and of the group's divisor)."""
    rng = random.Random(seed)
    keep: dict[int, tuple[int, ...]] = {}
    for g in analysis.prunable_groups():
        free = [u for u in range(g.size) if not bool(g.frozen_units[u])]
        width = max(g.unit_width, 1)
        step = math.lcm(round_to // math.gcd(round_to, width), max(g.divisor, 1))  # in units
        kept = g.size - min(len(free), round(ratio * g.size))
        kept = max(step, int(round(kept / step)) * step) if step > 1 else max(kept, 1)
        n_remove = min(len(free), g.size - kept)
        if n_remove <= 0:
            continue
        removed = set(rng.sample(free, n_remove))
        keep[g.id] = tuple(u for u in range(g.size) if u not in removed)
    return G.PruningPlan(keep=keep)


def _per_call(model: nn.Module, inputs: tuple, number: int) -> float:
    timer = Timer("model(*inputs)", globals={"model": model, "inputs": inputs})
    return timer.timeit(number).median


def compare(original: nn.Module, rewritten: nn.Module, inputs: tuple, rounds: int, number: int) -> dict[str, Any]:
    """Median seconds per call of each, alternating which runs first every round."""
    times: dict[str, list[float]] = {"original": [], "rewritten": []}
    with torch.inference_mode():
        for m in (original, rewritten):  # warm-up
            _per_call(m, inputs, max(1, number // 2))
        for r in range(rounds):
            pair = [("original", original), ("rewritten", rewritten)]
            for name, m in (pair if r % 2 == 0 else pair[::-1]):
                times[name].append(_per_call(m, inputs, number))
    out: dict[str, Any] = {}
    for name, runs in times.items():
        out[name] = {"median_ms": round(1e3 * statistics.median(runs), 3), "min_ms": round(1e3 * min(runs), 3),
                     "max_ms": round(1e3 * max(runs), 3), "runs_ms": [round(1e3 * t, 2) for t in runs]}
    out["speedup"] = round(statistics.median(times["original"]) / statistics.median(times["rewritten"]), 4)
    # the same from each round's adjacent pair, robust to load that drifts between rounds
    out["speedup_paired"] = round(statistics.median(a / b for a, b in zip(times["original"], times["rewritten"])), 4)
    out["speedup_min"] = round(min(times["original"]) / min(times["rewritten"]), 4)
    return out


def _measure(model: nn.Module, x: torch.Tensor, args: argparse.Namespace, name: str) -> dict[str, Any]:
    inputs = (x.expand(args.batch, *x.shape[1:]).contiguous(),)
    analysis = G.analyze(model, inputs)
    base_flops = model_cost(analysis.traced.gm, inputs).flops
    with torch.inference_mode():
        start = time.perf_counter()
        model(*inputs)
        once = time.perf_counter() - start
    number = args.number or max(1, int(0.25 / max(once, 1e-4)))
    # the default rewrite keeps the model's class; the GraphModule (``keep_class=False``, the
    # CLI's ``--graph-module``, what export writes) is measured too
    variants: list[tuple[str, G.PruningPlan]] = [("empty", G.PruningPlan(keep={})),
                                                  ("empty GraphModule", G.PruningPlan(keep={}))]
    if not args.empty_only:
        for ratio in (float(r) for r in args.ratios.split(",")):
            variants += [(f"{ratio:.0%}", ratio_plan(analysis, ratio)),
                         (f"{ratio:.0%} round_to 8", ratio_plan(analysis, ratio, round_to=8))]
    rows: dict[str, Any] = {}
    for label, plan in variants:
        applied = G.apply_plan(analysis, plan, keep_class=False if "GraphModule" in label else None)
        pruned = applied.model
        flops = model_cost(pruned, inputs).flops
        row = compare(model, pruned, inputs, args.rounds, number)
        row["flops_speedup"] = round(base_flops / flops, 4)
        row["speedup_per_flops"] = round(row["speedup_paired"] / row["flops_speedup"], 4)
        row["verified"] = bool(applied.verify.ok) if applied.verify is not None else None
        row["returned"] = type(pruned).__name__  # the model's class, or GraphModule
        rows[label] = row
        print(f"{name} [{label}] {json.dumps(row)}", flush=True)
    return {"gflops": round(base_flops / 1e9, 3), "calls_per_round": number, "plans": rows}


#: named settings; ``b1`` and ``b16`` are the two tables of docs/benchmarks.md
PROTOCOLS = {
    "b1": {"models": ",".join(CNNS), "batch": 1, "rounds": 11, "ratios": "0.3,0.5", "empty_only": False},
    "b16": {"models": "mobilenet_v3_large,efficientnet_b0,regnet_y_400mf,resnet50", "batch": 16, "rounds": 11,
            "ratios": "", "empty_only": True},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models")
    p.add_argument("--batch", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--number", type=int, default=0, help="calls per round (default: about 0.25 s of calls)")
    p.add_argument("--ratios")
    p.add_argument("--empty-only", action="store_true", default=None, help="only the plan that removes nothing")
    p.add_argument("--out", default="")
    records.add_record_flags(p)
    args = records.parse_with_protocol(p, PROTOCOLS, "b1")
    torch.set_num_threads(1)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"latency_pruned_b{args.batch}.json")
    for name in [n for n in args.models.split(",") if n]:
        settings = {"model": name, "input": [args.batch, 3, 224, 224], "rounds": args.rounds, "number": args.number,
                    "ratios": [] if args.empty_only else [float(r) for r in args.ratios.split(",")]}
        if not args.rerun and records.recorded(out, "latency_pruned", settings):
            print(f"{name}: recorded by this commit, skipped (--rerun to time it again)")
            continue
        model, (x,) = BENCH[name]()
        result = _measure(model, x, args, name)
        records.append_record(out, records.new_record("latency_pruned", settings, result, note=args.note))
    print(f"records in {out}")


if __name__ == "__main__":
    main()
