"""``apply SPEC PLAN --out DIR``: apply a saved plan (from ``check --save-plan``, ``prune`` or
``PruningPlan.save``) to the model, verify it and save the pruned model."""

from __future__ import annotations

import argparse
import warnings
from typing import Callable

from gdp_graph.cli.cmd_analysis import analyze_spec, batch_size
from gdp_graph.cli.common import (EXIT_DIFFERENT, EXIT_OK, add_model_arguments, add_output_arguments, make_console,
                                  print_json)


def cmd_apply(args: argparse.Namespace) -> int:
    from gdp_graph.graph.cost import model_cost
    from gdp_graph.prune.rewrite import VerifyWarning, rewrite
    from gdp_graph.prune.verify import verify
    from gdp_graph.report.outputs import load_plan, write_outputs
    from gdp_graph.report.tables import before_after_table
    plan = load_plan(args.plan)
    _, inputs, analysis = analyze_spec(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)  # the verdict is the exit code
        # the GraphModule: it takes the graph's positional inputs saved for 'export' (source too)
        pruned = rewrite(analysis, plan, tolerance=args.tolerance, keep_class=False)
    result = pruned.gdp_verify or verify(analysis, plan, pruned, tolerance=args.tolerance)
    before, after = model_cost(analysis.traced.gm, inputs), model_cost(pruned, inputs)
    n = batch_size(inputs)
    report = {"spec": args.spec, "plan": str(args.plan), "groups_pruned": len(plan.keep),
              "removed_blocks": sorted(plan.removed_blocks), "params_before": before.params,
              "params_after": after.params, "flops_per_sample_before": before.flops / n,
              "flops_per_sample_after": after.flops / n, "max_abs_diff": result.max_abs_diff,
              "max_rel_diff": result.max_rel_diff, "tolerance": args.tolerance, "ok": result.ok, "out": args.out}
    if args.out:
        write_outputs(args.out, pruned, plan, report, inputs, analysis=analysis)
    if args.json:
        print_json(report)
    else:
        console = make_console(args)
        console.print(before_after_table([("parameters", before.params, after.params, "count"),
                                          ("FLOPs per sample", before.flops / n, after.flops / n, "count")],
                                         title=f"apply {args.plan}"))
        console.print(f"{'verified' if result.ok else 'OUTPUTS DIFFER'}: {result}", style=None if result.ok else "red")
        if args.out:
            console.print(f"pruned model, plan and report written to {args.out}/ "
                          f"(export it with 'gdp-graph export {args.out} --format source')")
    return EXIT_OK if result.ok else EXIT_DIFFERENT


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("apply", "apply a saved pruning plan to the model, verify it, and save the pruned model "
                     "(exit 0 equal, 1 different, 2 error)")
    add_model_arguments(p)
    p.add_argument("plan", metavar="PLAN", help="plan.json from 'check --save-plan', 'prune' or PruningPlan.save "
                                                "(or the folder holding it)")
    add_output_arguments(p)
    p.add_argument("--out", metavar="DIR", help="write DIR/pruned.pt, DIR/plan.json and DIR/report.json")
    p.add_argument("--tolerance", type=float, default=1e-4, help="allowed max |diff| relative to the output scale")
    p.set_defaults(func=cmd_apply)
