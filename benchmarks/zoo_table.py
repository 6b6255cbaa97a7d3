"""The reference zoo (tests/zoo) pruned at random: groups, prunable groups, blocks, parameters and
FLOPs removed, and the largest difference to the gated reference.

    python benchmarks/zoo_table.py run [--ratio 0.3] [--seed 0] [--blocks 0.5] [--models vgg,vit] [--note TEXT]
    python benchmarks/zoo_table.py table          # the table, from benchmarks/results/zoo_table.json

``run`` appends one record per model (``benchmarks/records.py``) and skips the models the
current commit has recorded with the same settings; ``table`` prints the last run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import records  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "zoo_table.json"


def measure(name: str, ratio: float, seed: int, blocks: float) -> dict[str, Any]:
    """Analyse, plan at random, rewrite and verify one zoo model."""
    import gdp_graph as G
    from gdp_graph.graph.cost import model_cost
    from tests.zoo import ZOO

    model, inputs = ZOO[name]()
    a = G.analyze(model, inputs)
    plan = G.random_plan(a, ratio, seed=seed, block_ratio=blocks or None)
    pruned = G.rewrite(a, plan, keep_class=False)
    result = G.verify(a, plan, pruned)
    before, after = model_cost(a.traced.gm, inputs), model_cost(pruned, inputs)
    return {"groups": len(a.groups), "prunable": len(a.prunable_groups()),
            "blocks_removable": sum(b.prunable for b in a.blocks), "blocks": len(a.blocks),
            "blocks_removed": len(plan.removed_blocks), "params_removed": 1 - after.params / before.params,
            "flops_removed": 1 - after.flops / before.flops, "max_rel_diff": result.max_rel_diff, "ok": result.ok}


def table(path: Path) -> str:
    run = records.latest_run(path, "zoo_table")
    if run is None:
        raise SystemExit(f"{path}: no zoo_table records (run: python benchmarks/zoo_table.py run)")
    s, rec = run["record"]["settings"], run["record"]
    lines = [f"Random plan removing {s['ratio']:g} of every prunable group and {s['blocks']:g} of the removable "
             f"blocks (seed {s['seed']}), {rec['date'][:10]}, commit {(rec['commit'] or '?')[:7]}:", "",
             "| model | groups | prunable | blocks removed / removable / all | params removed | FLOPs removed "
             "| max rel diff | verified |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in run["rows"].items():
        lines.append(f"| {name} | {r['groups']} | {r['prunable']} | {r['blocks_removed']} / {r['blocks_removable']} / "
                     f"{r['blocks']} | {r['params_removed']:.1%} | {r['flops_removed']:.1%} | {r['max_rel_diff']:.1e} "
                     f"| {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    r = records.run_and_table_commands(p, RESULTS)
    r.add_argument("--ratio", type=float, default=0.3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--blocks", type=float, default=0.5, help="share of removable blocks to remove")
    r.add_argument("--models", default="", help="comma-separated zoo names (default: every model)")
    args = p.parse_args()
    if args.command == "table":
        print(table(args.results))
        return
    import torch

    from tests.zoo import ZOO
    torch.set_num_threads(1)
    names = [n for n in args.models.split(",") if n] or list(ZOO)
    if unknown := [n for n in names if n not in ZOO]:
        p.error(f"--models: no zoo model {', '.join(unknown)} (one of {', '.join(ZOO)})")
    for name in names:
        settings = {"model": name, "ratio": args.ratio, "seed": args.seed, "blocks": args.blocks}
        if not args.rerun and records.recorded(args.out, "zoo_table", settings):
            continue
        row = measure(name, args.ratio, args.seed, args.blocks)
        print(f"{name}: {row}", flush=True)
        records.append_record(args.out, records.new_record("zoo_table", settings, row, seed=args.seed, note=args.note))
    print(table(args.out))


if __name__ == "__main__":
    main()
