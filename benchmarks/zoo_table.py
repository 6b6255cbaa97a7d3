"""Print the reference-zoo table: groups, prunable groups, params/FLOPs removed at a ratio, max diff.

    python benchmarks/zoo_table.py [--ratio 0.3] [--seed 0] [--blocks 0.0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gdp_graph as G  # noqa: E402
from gdp_graph.graph.cost import model_cost  # noqa: E402
from tests.zoo import ZOO  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocks", type=float, default=0.0, help="share of removable blocks to remove")
    args = p.parse_args()
    print(f"| model | groups | prunable | blocks | params removed | FLOPs removed | max rel diff | verified |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, factory in ZOO.items():
        model, inputs = factory()
        a = G.analyze(model, inputs)
        plan = G.random_plan(a, args.ratio, seed=args.seed, block_ratio=args.blocks or None)
        pruned = G.rewrite(a, plan)
        result = G.verify(a, plan, pruned)
        before, after = model_cost(a.traced.gm, inputs), model_cost(pruned, inputs)
        print(f"| {name} | {len(a.groups)} | {len(a.prunable_groups())} | {sum(b.prunable for b in a.blocks)}/{len(a.blocks)} "
              f"| {1 - after.params / before.params:.1%} | {1 - after.flops / before.flops:.1%} "
              f"| {result.max_rel_diff:.1e} | {'yes' if result.ok else 'NO'} |")


if __name__ == "__main__":
    main()
