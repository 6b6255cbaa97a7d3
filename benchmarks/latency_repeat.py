"""How stable is one latency measurement? The same one-shot plans measured again and again in one
process, alternating, by the measurement every latency target relies on
(:func:`gdp_graph.latency.loop.latency_measure`: the plan's model against the original in
interleaved rounds, median of the per-round ratios, on the table's clock).

    OMP_NUM_THREADS=1 python benchmarks/latency_repeat.py [--model cifar_mobilenetv2|resnet50|...]
        [--fractions 0.55 0.17] [--measurements 5] [--batch 16] [--rounds 15] [--repeat 5]
        [--train-between 5] [--malloc pinned]
    python benchmarks/latency_repeat.py --table        # benchmarks/results/latency_repeat.json

Each plan keeps ``fraction`` of the FLOPs by one-shot magnitude (random weights: only shapes
matter to time). One record per run, with every measurement's ratio and quartiles in the order
taken and the load average before and after. The table gives, per plan, the smallest, median and
largest ratio, their spread, and whether the quartile ranges of all measurements overlap: where
they do not, a single measurement cannot place a plan within its spread, whatever the target's
tolerance.

What a process did before it measures can move the measurement: ``--train-between N`` runs N
SGD steps (batch ``--train-batch``) of a throwaway copy of the network after the first
measurement of every plan, as a GDP run trains before it measures its model. ``--malloc pinned``
reruns the script with glibc's ``MALLOC_TRIM_THRESHOLD_`` (1 GiB) and ``MALLOC_MMAP_THRESHOLD_``
(32 MiB, its maximum) set, so freed memory stays with the process whatever ran before (by
default glibc returns it to the system, or maps large blocks afresh, by thresholds that move
with the process's history: a forward then pays page faults for its activations).
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
from gdp_graph.latency.allocator import MMAP_BYTES, TRIM_BYTES  # noqa: E402

BENCHMARK = "latency_repeat"
#: glibc's allocator held steady (``--malloc pinned``)
PINNED = {"MALLOC_TRIM_THRESHOLD_": str(TRIM_BYTES), "MALLOC_MMAP_THRESHOLD_": str(MMAP_BYTES)}  # as the library holds them
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
        if i == 0 and args.train_between:
            _train_a_copy(model, inputs, args.train_between, args.train_batch)
    return {"measurements": taken, "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def _train_a_copy(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], steps: int, batch: int) -> None:
    """``steps`` SGD steps of a copy of ``model`` on random data of ``batch`` (the copy is thrown away)."""
    from gdp_graph.graph.model_copy import deepcopy_model
    copy = deepcopy_model(model).train()
    optimizer = torch.optim.SGD(copy.parameters(), lr=1e-3)
    x = torch.randn(batch, *inputs[0].shape[1:])
    for _ in range(steps):
        loss = copy(x).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"  trained a copy for {steps} steps at batch {batch}", flush=True)


def table(path: Path) -> str:
    """Per record and plan: min / median / max of the measured ratio, the spread, whether all
    quartile ranges overlap."""
    lines = ["| model | batch | trained between | malloc | FLOPs kept | measurements | first | min | median | max "
             "| spread | quartile ranges overlap | load | commit |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in records.load_records(path):
        if r.get("benchmark") != BENCHMARK:
            continue
        s, res = r["settings"], r["result"]
        for f, ms in res["measurements"].items():
            ratios = [m["ratio"] for m in ms]
            overlap = max(m["q1"] for m in ms) <= min(m["q3"] for m in ms)
            lines.append(f"| {s['model']} | {s['batch']} | {s.get('train_between', 0)} | {s.get('malloc', 'default')} "
                         f"| {f} | {len(ms)} | {ratios[0]:.3f} | {min(ratios):.3f} | "
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
    p.add_argument("--train-between", type=int, default=0, help="SGD steps of a throwaway copy after the first measurement")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--malloc", choices=("default", "pinned"), default="default",
                   help="pinned: glibc's trim and mmap thresholds held (the script reruns itself with them set)")
    records.add_record_flags(p, DEFAULT_RESULTS)
    args = p.parse_args(argv)
    if args.table:
        print(table(Path(args.results)))
        return
    if args.malloc == "pinned" and any(os.environ.get(k) != v for k, v in PINNED.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED})  # glibc reads them at start
    torch.set_num_threads(1)
    keys = ("model", "fractions", "measurements", "batch", "rounds", "repeat", "train_between", "malloc")
    settings = {k: getattr(args, k) for k in keys}
    if not args.train_between and args.malloc == "default":  # the settings of the records before these flags
        settings = {k: v for k, v in settings.items() if k not in ("train_between", "malloc")}
    result = measure_repeatedly(args)
    result["malloc_env"] = {k: os.environ.get(k) for k in PINNED}
    records.append_record(args.results, records.new_record(BENCHMARK, settings, result, note=args.note))
    print(f"record in {args.results}")


if __name__ == "__main__":
    main()
