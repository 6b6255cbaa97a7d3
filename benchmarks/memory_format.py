"""Training-step time of the `gdp-graph train` models in the channels-last memory layout against
the default (contiguous) one: the plain CIFAR ResNet and its gated copy.

For each of plain and gated, the two layouts train side by side in one process on the same
batch, their steps interleaved (contiguous, channels-last, ...), and the script prints the
median step time of each and the median of the per-pair ratios (channels-last / contiguous).

    python benchmarks/memory_format.py [--depth 20] [--batch 128] [--threads 2] [--out FILE.json] [--note TEXT]

``--table FILE.json`` prints every run in the file; ``--out`` appends a record
(``benchmarks/records.py``); a rerun at the same commit is skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import records  # noqa: E402
from benchmarks.gate_overhead import _step  # noqa: E402
from gdp_graph.gates.attach import attach  # noqa: E402
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet  # noqa: E402


def compare(model: torch.nn.Module, penalty_of, x: torch.Tensor, y: torch.Tensor, reps: int, warmup: int) -> dict:
    """Interleaved step times of ``model`` in the contiguous and the channels-last layout."""
    models = [copy.deepcopy(model), copy.deepcopy(model).to(memory_format=torch.channels_last)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    times: list[list[float]] = [[], []]
    for rep in range(warmup + reps):
        for i, m in enumerate(models):
            t = _step(m, opts[i], x, y, penalty_of(m), autocast=False)
            if rep >= warmup:
                times[i].append(t)
    ratios = [c / d for d, c in zip(*times)]
    return {"contiguous_ms": 1e3 * statistics.median(times[0]), "channels_last_ms": 1e3 * statistics.median(times[1]),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "pairs": len(ratios)}


def table(path: Path) -> str:
    """The runs of a results file as a table: the latest of each model, batch and threads (a record
    replaces a row written before records, commit "-", with the same ones)."""
    data = json.loads(path.read_text())
    runs = [(r, r["date"], "-") for r in (data.get("legacy", []) if isinstance(data, dict) else data)]
    runs += [({**rec["settings"], **rec["result"]}, rec["date"][:10], (rec["commit"] or "?")[:7])
             for rec in records.load_records(path)]
    runs = list({(r["model"], r["batch"], r["threads"]): (r, date, commit) for r, date, commit in runs}.values())
    lines = ["| model | batch | threads | model kind | channels-last / contiguous step, median (min–max) | pairs "
             "| date | commit |", "|---|---:|---:|---|---:|---:|---|---|"]
    for r, date, commit in runs:
        for kind in ("plain", "gated"):
            k = r[kind]
            lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {kind} | {k['ratio_median']:.3f} "
                         f"({k['ratio_min']:.2f}–{k['ratio_max']:.2f}) | {k['pairs']} | {date} | {commit} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", type=Path, default=None, help="append the result to this JSON file")
    p.add_argument("--table", type=Path, default=None, metavar="FILE", help="print the runs in FILE and stop")
    records.add_record_flags(p)
    args = p.parse_args()
    if args.table is not None:
        print(table(args.table))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"model": f"ResNet-{args.depth}", "batch": args.batch, "reps": args.reps, "warmup": args.warmup,
                "threads": torch.get_num_threads()}
    if args.out is not None and not args.rerun and records.recorded(args.out, "memory_format", settings):
        print("recorded by this commit, skipped (--rerun to time it again)")
        return
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    plain = cifar_resnet(args.depth).train()
    gated = attach(plain, policy="cifar_resnet", example_inputs=x[:2], total_steps=1000).train()
    rows = {"plain": compare(plain, lambda m: None, x, y, args.reps, args.warmup),
            "gated": compare(gated, lambda m: m.penalty, x, y, args.reps, args.warmup)}
    print(f"ResNet-{args.depth}, batch {args.batch}, {torch.get_num_threads()} threads, fp32")
    for name, r in rows.items():
        print(f"{name:6s} contiguous {r['contiguous_ms']:7.1f} ms  channels-last {r['channels_last_ms']:7.1f} ms  "
              f"ratio median {r['ratio_median']:.3f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}, "
              f"{r['pairs']} interleaved pairs)")
    if args.out is not None:
        records.append_record(args.out, records.new_record("memory_format", settings, rows, seed=0, note=args.note))


if __name__ == "__main__":
    main()
