"""Training-step overhead of the gates: a gated model against the plain one (a CIFAR ResNet, or
a ViT on CIFAR-sized images with its head and MLP gates).

Both models are trained side by side in one process on the same batches, their steps
interleaved (plain, gated, plain, gated, ...) so that machine noise hits both alike; the
script prints the median step time of each and the median of the per-repetition ratios.

    python benchmarks/gate_overhead.py --threads 1                 # ResNet-56, batch 128, CPU
    python benchmarks/gate_overhead.py --model vit --threads 1     # ViT (embed 192, depth 6), batch 64
    python benchmarks/gate_overhead.py --depth 20 --reps 5 --autocast

``python benchmarks/gate_overhead.py --table FILE.json`` prints every run in the file as a table.
``--out FILE.json`` appends a record (``benchmarks/records.py``: commit, command, machine, date;
``--note`` for anything else); a rerun with the same settings at the same commit is skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the ViT is the zoo's (tests/zoo)

from benchmarks import records  # noqa: E402
from gdp_graph.gates.attach import attach  # noqa: E402
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet  # noqa: E402
from tests.zoo.vit import VisionTransformer  # noqa: E402


def _step(model, opt, x, y, penalty, autocast: bool) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(model(x), y)
    if penalty is not None:
        loss = loss.float() + penalty()
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("resnet", "vit"), default="resnet")
    p.add_argument("--depth", type=int, default=None, help="ResNet depth (56) or ViT depth (6)")
    p.add_argument("--batch", type=int, default=None, help="128 for the ResNet, 64 for the ViT")
    p.add_argument("--reps", type=int, default=9, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--policy", default=None, help="default: cifar_resnet or vit")
    p.add_argument("--out", type=Path, default=None, help="append the result to this JSON file")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--table", type=Path, default=None, metavar="FILE", help="print the runs in FILE and stop")
    records.add_record_flags(p)
    args = p.parse_args()
    if args.table is not None:
        print(table(args.table))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vit = args.model == "vit"
    depth = args.depth or (6 if vit else 56)
    batch = args.batch or (64 if vit else 128)
    policy = args.policy or ("vit" if vit else "cifar_resnet")
    settings = {"model": args.model, "depth": depth, "batch": batch, "reps": args.reps, "warmup": args.warmup,
                "policy": policy, "precision": "bf16 autocast" if args.autocast else "fp32",
                "threads": torch.get_num_threads()}
    if args.out is not None and not args.rerun and records.recorded(args.out, "gate_overhead", settings):
        print("recorded by this commit, skipped (--rerun to time it again)")
        return
    if vit:
        plain, name = VisionTransformer(embed_dim=192, depth=depth, num_heads=3).train(), f"ViT (embed 192, depth {depth}, 3 heads)"
    else:
        plain, name = cifar_resnet(depth).train(), f"ResNet-{depth}"
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    gated = attach(plain, policy=policy, example_inputs=x[:2], total_steps=1000)
    gated.train()
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (plain, gated)]
    penalties = [None, gated.penalty]
    steps = [lambda: None, gated.step]
    times: list[list[float]] = [[], []]
    for rep in range(args.warmup + args.reps):
        for i, model in enumerate((plain, gated)):
            t = _step(model, opts[i], x, y, penalties[i], args.autocast)
            steps[i]()
            if rep >= args.warmup:
                times[i].append(t)
    ratios = [g / u for u, g in zip(*times)]
    machinery = _machinery_ms(gated)
    report = gated.bank.extra_repr()
    print(f"{name}, batch {batch}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if args.autocast else 'fp32'}; gates: {report}")
    print(f"plain step  median {statistics.median(times[0]) * 1e3:8.1f} ms")
    print(f"gated step  median {statistics.median(times[1]) * 1e3:8.1f} ms (penalty included; gated.step() runs between "
          "timed steps and is in the machinery below)")
    print(f"gated/plain median ratio {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} interleaved pairs)")
    print(f"gate machinery alone {machinery:.1f} ms per step (bank forward+backward, penalty, gated.step()) = "
          f"{100 * machinery / 1e3 / statistics.median(times[0]):.2f}% of the plain step")
    if args.out is not None:
        result = {"name": name, "plain_ms": 1e3 * statistics.median(times[0]),
                  "gated_ms": 1e3 * statistics.median(times[1]), "ratio_median": statistics.median(ratios),
                  "ratio_min": min(ratios), "ratio_max": max(ratios), "pairs": len(ratios), "machinery_ms": machinery}
        records.append_record(args.out, records.new_record("gate_overhead", settings, result, seed=0, note=args.note))


def table(path: Path) -> str:
    """The runs of a results file as a table: the latest of each model, batch, threads and
    precision (a record replaces a row written before records, commit "-", with the same ones)."""
    data = json.loads(path.read_text())
    legacy = data.get("legacy", []) if isinstance(data, dict) else data
    latest: dict[tuple, dict] = {}
    runs = [{**r, "name": r["model"], "commit": "-"} for r in legacy]
    runs += [{**rec["settings"], **rec["result"], "date": rec["date"][:10], "commit": (rec["commit"] or "?")[:7]}
             for rec in records.load_records(path)]
    for r in runs:
        latest[(r["name"], r["batch"], r["threads"], r["precision"])] = r
    rows = list(latest.values())
    lines = ["| model | batch | threads | precision | gated / plain step, median (min–max) | pairs | "
             "gate machinery, share of a plain step | date | commit |", "|---|---:|---:|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['batch']} | {r['threads']} | {r['precision']} | {r['ratio_median']:.3f} "
                     f"({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {r['pairs']} | "
                     f"{r['machinery_ms'] / r['plain_ms']:.2%} | {r['date']} | {r['commit']} |")
    return "\n".join(lines)


def _machinery_ms(gated, reps: int = 50) -> float:
    """Median time of what the gates add outside the layers themselves."""
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        scales = gated.bank()
        loss = sum(s.sum() for s in scales) + gated.penalty()
        loss.backward()
        gated.step()
        samples.append(time.perf_counter() - start)
    gated.zero_grad(set_to_none=True)
    return 1e3 * statistics.median(samples)


if __name__ == "__main__":
    main()
