"""The ``gdp-graph`` command: inspect a model's channel groups, check exact pruning, train.

Exit codes: 0 success, 1 outputs differ (``check``), 2 usage, tracing, policy or data error
(one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, Optional, Sequence

from rich.console import Console

from gdp_graph import __version__
from gdp_graph.errors import GdpError

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE = 0, 1, 2


class UsageError(GdpError):
    pass


def _known_errors() -> tuple[type[BaseException], ...]:
    from gdp_graph.graph.analysis import AnalysisError
    from gdp_graph.prune.plan import PlanError
    from gdp_graph.policy import PolicyError
    from gdp_graph.prune.rewrite import RewriteError
    from gdp_graph.cli.spec import SpecError
    from gdp_graph.graph.trace import TraceError
    errors: list[type[BaseException]] = [AnalysisError, PlanError, PolicyError, RewriteError, SpecError, TraceError,
                                         UsageError, FileNotFoundError]
    try:
        from gdp_graph.recipes.cifar10.data.cifar10 import Cifar10Error
        errors.append(Cifar10Error)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _analyze_spec(args):
    from gdp_graph.graph.analysis import analyze
    from gdp_graph.cli.spec import load_spec
    model, inputs = load_spec(args.spec, args.input_shape)
    return model, inputs, analyze(model, inputs)


def _policy_columns(analysis, policy_path: Optional[str]):
    if not policy_path:
        return None, None, []
    from gdp_graph.policy import load_policy, resolve
    policy = load_policy(policy_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = resolve(policy, analysis.groups, analysis.blocks)
    reasons = {(k, i): r for k, i, r in res.ungated()}
    group_col, block_col = {}, {}
    for gid, s in res.group_settings.items():
        rules = ",".join(str(r) for r in s.rules) or "defaults"
        group_col[gid] = f"{s.level} (rules {rules})" if ("group", gid) not in reasons else f"ungated: {reasons[('group', gid)]}"
    for bid, s in res.block_settings.items():
        block_col[bid] = s.level if ("block", bid) not in reasons else f"ungated: {reasons[('block', bid)]}"
    return group_col, block_col, [res.report()]


def cmd_inspect(args) -> int:
    from gdp_graph.graph.cost import CostModel
    from gdp_graph.report.tables import group_rows, print_inspect
    _, _, analysis = _analyze_spec(args)
    cost = CostModel(analysis)
    shares = cost.group_shares()
    group_col, block_col, notes = _policy_columns(analysis, args.policy)
    if args.json:
        print(json.dumps({
            "groups": group_rows(analysis, shares),
            "blocks": [{"block": b.id, "name": b.name, "modules": b.modules, "prunable": b.prunable,
                        "identity_shortcut": b.shortcut_is_identity, "frozen": b.frozen_reasons} for b in analysis.blocks],
            "opaque": [{"module": o.module, "reason": o.reason} for o in analysis.opaque],
            "flops": cost.total.flops, "params": cost.total.params,
            "policy": {"groups": group_col, "blocks": block_col, "report": notes} if args.policy else None,
        }, indent=1))
        return EXIT_OK
    console = Console(width=args.width)
    print_inspect(console, analysis, shares, title=args.spec, total_flops=cost.total.flops,
                  total_params=cost.total.params, group_policy=group_col, block_policy=block_col, policy_notes=notes)
    return EXIT_OK


def cmd_check(args) -> int:
    from gdp_graph.graph.cost import model_cost
    from gdp_graph.prune.plan import random_plan
    from gdp_graph.report.tables import print_check
    from gdp_graph.prune.rewrite import rewrite
    from gdp_graph.prune.verify import verify
    model, inputs, analysis = _analyze_spec(args)
    if not analysis.prunable_groups():
        raise UsageError(f"{args.spec}: no prunable channel group (every group is frozen; run 'gdp-graph inspect' to see why)")
    plan = random_plan(analysis, args.ratio, seed=args.seed, block_ratio=args.blocks)
    pruned = rewrite(analysis, plan)
    result = verify(analysis, plan, pruned, tolerance=args.tolerance)
    # the traced graph is the same computation; FlopCounterMode sees inside fused modules there
    before, after = model_cost(analysis.traced.gm, inputs), model_cost(pruned, inputs)
    out: dict[str, Any] = {
        "spec": args.spec, "ratio": args.ratio, "seed": args.seed,
        "groups": len(analysis.groups), "prunable_groups": len(analysis.prunable_groups()),
        "groups_pruned": len(plan.keep), "removed_blocks": sorted(plan.removed_blocks),
        "frozen": [{"group": g.id, "reason": g.describe_frozen()} for g in analysis.groups if not (g.prunable and g.exact)],
        "opaque": [{"module": o.module, "reason": o.reason} for o in analysis.opaque],
        "params_before": before.params, "params_after": after.params,
        "flops_before": before.flops, "flops_after": after.flops,
        "max_abs_diff": result.max_abs_diff, "max_rel_diff": result.max_rel_diff, "ok": result.ok,
    }
    if args.save_plan:
        plan.save(args.save_plan)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print_check(Console(width=args.width), out)
    return EXIT_OK if result.ok else EXIT_DIFFERENT


def cmd_train(args) -> int:
    from gdp_graph.recipes.cifar10.pipeline import run_pipeline
    return run_pipeline(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gdp-graph", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gdp-graph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("spec", help="package.module:factory or path/to/file.py:factory (returns a model or (model, inputs))")
        p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (overrides the factory's inputs)")
        p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
        p.add_argument("--width", type=int, default=None, help="terminal width for tables")

    p = sub.add_parser("inspect", help="show channel groups, blocks and opaque leaves")
    model_args(p)
    p.add_argument("--policy", help="a YAML policy: show which groups and blocks each rule gates")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("check", help="randomly prune, rewrite and verify exactness")
    model_args(p)
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of every prunable group to remove")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocks", type=float, default=0.5, help="fraction of removable blocks to remove (0 for none)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="allowed max |diff| relative to the output scale")
    p.add_argument("--save-plan", help="write the random plan as JSON")
    p.set_defaults(func=cmd_check)

    from gdp_graph.recipes.cifar10.pipeline import add_train_arguments
    p = sub.add_parser("train", help="GDP on CIFAR-10: pretrain, polarize gates, finalize, fine-tune, report")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "ratio", None) is not None and not 0 <= args.ratio < 1:
        parser.error(f"--ratio must be in [0, 1), got {args.ratio}")
    try:
        return args.func(args)
    except _known_errors() as exc:
        print(f"gdp-graph: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " | ".join(lines[:4])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
