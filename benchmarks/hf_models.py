"""Hugging Face transformers models on tiny configs (random init): front end, groups, what a
random plan removes, the difference to the gated reference, and the class of the result.

    OMP_NUM_THREADS=1 python benchmarks/hf_models.py [--ratio 0.5] [--seed 0]

Two plans per model, both rewritten with rewrite's default (the model's own class where it
verifies, else the GraphModule): heads and MLP channels only, and the same with half the
removable blocks (attention / MLP halves, whose submodules the class gets as stand-ins returning
the branch's constant term).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gdp_graph as G  # noqa: E402
from tests.test_hf_models import MODELS  # noqa: E402  (the tiny configs the tests use)


def removed(analysis, plan, unit: str) -> str:
    groups = [g for g in analysis.groups if g.unit == unit and g.id in plan.keep]
    gone = sum(g.size - len(plan.keep[g.id]) for g in groups)
    total = sum(g.size for g in analysis.groups if g.unit == unit and g.prunable)
    return f"{gone}/{total}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print("| model | front end | groups (prunable) | head units removed | channels removed | blocks removed | "
          "max rel diff | result class | max rel diff (with blocks) | result class (with blocks) | analyze s |")
    print("|---|---|---|---|---|---|---|---|---|---|---:|")
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model, inputs = make()
        model.eval()
        start = time.perf_counter()
        a = G.analyze(model, inputs)
        seconds = time.perf_counter() - start
        plan = G.random_plan(a, args.ratio, seed=args.seed)
        kept = G.rewrite(a, plan)
        with_blocks = G.random_plan(a, args.ratio, seed=args.seed, block_ratio=0.5)
        blocks_kept = G.rewrite(a, with_blocks)
        channels = sum(g.size - len(k) for gid, k in plan.keep.items() if (g := a.groups[gid]).unit == "channel")
        print(f"| {name} | {a.traced.front_end} | {len(a.groups)} ({len(a.prunable_groups())}) | "
              f"{removed(a, plan, 'head')} | {channels} | {len(with_blocks.removed_blocks)}/{len(a.blocks)} | "
              f"{kept.gdp_verify.max_rel_diff:.2g} | {type(kept).__name__} | {blocks_kept.gdp_verify.max_rel_diff:.2g} | "
              f"{type(blocks_kept).__name__} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
