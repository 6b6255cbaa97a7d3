"""Hugging Face transformers models on tiny configs (random init): front end, groups, what a
random plan removes, the difference to the gated reference, and the class of the result.

    OMP_NUM_THREADS=1 python benchmarks/hf_models.py run [--ratio 0.5] [--seed 0] [--note TEXT]
    python benchmarks/hf_models.py table          # from benchmarks/results/hf_models.json

Two plans per model, both rewritten with rewrite's default (the model's own class where it
verifies, else the GraphModule): heads and MLP channels only, and the same with half the
removable blocks (attention / MLP halves, whose submodules the class gets as stand-ins returning
the branch's constant term). ``run`` appends one record per model (``benchmarks/records.py``)
and skips the models this commit has recorded with the same settings.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import records  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "hf_models.json"


def _removed(analysis, plan, unit: str) -> str:
    groups = [g for g in analysis.groups if g.unit == unit and g.id in plan.keep]
    gone = sum(g.size - len(plan.keep[g.id]) for g in groups)
    total = sum(g.size for g in analysis.groups if g.unit == unit and g.prunable)
    return f"{gone}/{total}"


def measure(make, ratio: float, seed: int) -> dict[str, Any]:
    """Analyse one tiny model, rewrite two random plans (without and with blocks), verify both."""
    import torch

    import gdp_graph as G
    torch.manual_seed(0)
    model, inputs = make()
    model.eval()
    start = time.perf_counter()
    a = G.analyze(model, inputs)
    seconds = time.perf_counter() - start
    out: dict[str, Any] = {"front_end": a.traced.front_end, "groups": len(a.groups),
                           "prunable": len(a.prunable_groups()), "blocks": len(a.blocks), "analyze_s": seconds}
    for label, block_ratio in (("", None), ("_with_blocks", 0.5)):
        plan = G.random_plan(a, ratio, seed=seed, block_ratio=block_ratio)
        pruned = G.rewrite(a, plan)
        result = G.verify(a, plan, pruned)
        out[f"max_rel_diff{label}"], out[f"class{label}"] = result.max_rel_diff, type(pruned).__name__
        out[f"ok{label}"] = result.ok
        if block_ratio is None:
            out["heads_removed"] = _removed(a, plan, "head")
            out["channels_removed"] = sum(a.groups[gid].size - len(k) for gid, k in plan.keep.items()
                                          if a.groups[gid].unit == "channel")
        else:
            out["blocks_removed"] = len(plan.removed_blocks)
    return out


def table(path: Path) -> str:
    run = records.latest_run(path, "hf_models")
    if run is None:
        raise SystemExit(f"{path}: no hf_models records (run: python benchmarks/hf_models.py run)")
    rec = run["record"]
    lines = [f"Random plans removing {rec['settings']['ratio']:g} (seed {rec['settings']['seed']}), "
             f"{rec['date'][:10]}, commit {(rec['commit'] or '?')[:7]}:", "",
             "| model | front end | groups (prunable) | head units removed | channels removed | blocks removed | "
             "max rel diff | result class | max rel diff (with blocks) | result class (with blocks) | analyze s |",
             "|---|---|---|---|---|---|---|---|---|---|---:|"]
    for name, r in run["rows"].items():
        lines.append(f"| {name} | {r['front_end']} | {r['groups']} ({r['prunable']}) | {r['heads_removed']} | "
                     f"{r['channels_removed']} | {r['blocks_removed']}/{r['blocks']} | {r['max_rel_diff']:.2g} | "
                     f"{r['class']} | {r['max_rel_diff_with_blocks']:.2g} | {r['class_with_blocks']} | "
                     f"{r['analyze_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    r = records.run_and_table_commands(p, RESULTS)
    r.add_argument("--ratio", type=float, default=0.5)
    r.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.command == "table":
        print(table(args.results))
        return
    from tests.test_hf_models import MODELS  # the tiny configs the tests use
    warnings.filterwarnings("ignore")
    for name, make in MODELS.items():
        settings = {"model": name, "ratio": args.ratio, "seed": args.seed}
        if not args.rerun and records.recorded(args.out, "hf_models", settings):
            continue
        row = measure(make, args.ratio, args.seed)
        print(f"{name}: {row}", flush=True)
        records.append_record(args.out, records.new_record("hf_models", settings, row, seed=args.seed, note=args.note))
    print(table(args.out))


if __name__ == "__main__":
    main()
