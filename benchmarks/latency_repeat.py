"""How stable is one latency measurement? The same one-shot plans measured again and again in one
process, alternating, by the measurement every latency target relies on
(:func:`gdp_graph.latency.loop.latency_measure`: the plan's model against the original in
interleaved rounds, median of the per-round ratios, on the table's clock).

    OMP_NUM_THREADS=1 python benchmarks/latency_repeat.py [--model cifar_mobilenetv2|resnet50|...]
        [--fractions 0.55 0.17] [--measurements 5] [--batch 16] [--rounds 15] [--repeat 5]
    python benchmarks/latency_repeat.py --table        # benchmarks/results/latency_repeat.json

Each plan keeps ``fraction`` of the FLOPs by one-shot magnitude (random weights: only shapes
matter to time). One record per run, with every measurement's ratio and quartiles in the order
taken and the load average before and after. The table gives, per plan, the smallest, median and
largest ratio, their spread, and whether the quartile ranges of all measurements overlap: where
they do not, a single measurement cannot place a plan within its spread, whatever the target's
tolerance.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import records  # noqa: E402

BENCHMARK = "latency_repeat"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "latency_repeat.json"


def _model(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """``cifar_mobilenetv2`` (the CIFAR latency benchmark's network, width 0.5, 32x32), a
    benchmark model (224x224) or ``zoo:NAME``."""
    torch.manual_seed(0)
    if name == "cifar_mobilenetv2":
        from benchmarks.cifar_latency import CifarMobileNetV2
        return CifarMobileNetV2(width=0.5).eval(), (torch.randn(1, 3, 32, 32),)
    from benchmarks.latency_target import _factory
    model, inputs = _factory(name)()
    return model.eval(), inputs


def measure_repeatedly(args: argparse.Namespace) -> dict[str, Any]:
    """Every plan measured ``args.measurements`` times, the plans alternating."""
    import gdp_graph as G
    from gdp_graph.importance import one_shot_plan, score_units
    from gdp_graph.latency import LatencySettings
    from gdp_graph.latency.loop import latency_measure
    from gdp_graph.policy import policy_from_dict, resolve
    model, inputs = _model(args.model)
    analysis = G.analyze(model, inputs)
    policy = policy_from_dict({"version": 1, "target": {"metric": "flops", "fraction": 0.5}})
    resolution = resolve(policy, analysis.groups, analysis.blocks)
    scores = score_units(analysis, "magnitude")
    plans = {f: one_shot_plan(analysis, scores, resolution, f, metric="flops")[0] for f in args.fractions}
    settings = LatencySettings(threads=1, batch=args.batch)
    measure = latency_measure(model, lambda p: G.rewrite(analysis, p, check=False, keep_class=False).eval(),
                              analysis.traced.example_inputs, settings, rounds=args.rounds, repeat=args.repeat)
    taken: dict[str, list[dict[str, float]]] = {str(f): [] for f in args.fractions}
    load_before = os.getloadavg()[0]
    for i in range(args.measurements):
        for f, plan in plans.items():
            _, m = measure(plan)
            taken[str(f)].append({"ratio": round(m.ratio, 4), "q1": round(m.q1, 4), "q3": round(m.q3, 4)})
            print(f"  measurement {i + 1}, FLOPs {f}: {m.ratio:.3f} [{m.q1:.3f}-{m.q3:.3f}]", flush=True)
    return {"measurements": taken, "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def table(path: Path) -> str:
    """Per record and plan: min / median / max of the measured ratio, the spread, whether all
    quartile ranges overlap."""
    lines = ["| model | batch | FLOPs kept | measurements | min | median | max | spread | quartile ranges overlap "
             "| load | commit |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in records.load_records(path):
        if r.get("benchmark") != BENCHMARK:
            continue
        s, res = r["settings"], r["result"]
        for f, ms in res["measurements"].items():
            ratios = [m["ratio"] for m in ms]
            overlap = max(m["q1"] for m in ms) <= min(m["q3"] for m in ms)
            lines.append(f"| {s['model']} | {s['batch']} | {f} | {len(ms)} | {min(ratios):.3f} | "
                         f"{statistics.median(ratios):.3f} | {max(ratios):.3f} | {max(ratios) - min(ratios):.3f} | "
                         f"{'yes' if overlap else 'no'} | {res['load_before']:.2f}-{res['load_after']:.2f} | "
                         f"{str(r['commit'])[:7]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_mobilenetv2")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.55, 0.17])
    p.add_argument("--measurements", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--repeat", type=int, default=5)
    records.add_record_flags(p, DEFAULT_RESULTS)
    args = p.parse_args(argv)
    if args.table:
        print(table(Path(args.results)))
        return
    torch.set_num_threads(1)
    settings = {k: getattr(args, k) for k in ("model", "fractions", "measurements", "batch", "rounds", "repeat")}
    result = measure_repeatedly(args)
    records.append_record(args.results, records.new_record(BENCHMARK, settings, result, note=args.note))
    print(f"record in {args.results}")


if __name__ == "__main__":
    main()
