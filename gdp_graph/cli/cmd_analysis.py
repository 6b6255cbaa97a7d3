"""``inspect`` (what can be pruned, and what a policy would gate) and ``check`` (a random plan,
rewritten and verified)."""

from __future__ import annotations

import argparse
import warnings
from typing import Any, Callable, Optional

from gdp_graph.cli.spec import add_meta_argument
from gdp_graph.cli.common import (EXIT_DIFFERENT, EXIT_OK, UsageError, add_model_arguments, add_output_arguments,
                                  make_console, print_json, resolve_policy_argument)


def batch_size(inputs: tuple) -> int:
    """The example batch's size (leading dim of the first tensor input), for per-sample FLOPs."""
    import torch
    for value in inputs:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


def analyze_spec(args: argparse.Namespace, *, realistic: bool = False):
    from gdp_graph.cli.spec import load_spec
    from gdp_graph.graph.analysis import analyze
    from gdp_graph.prune.weights import realistic_weights
    meta = getattr(args, "meta", False)
    model, inputs = load_spec(args.spec, args.input_shape, meta=meta)
    if realistic and not meta:  # a copy: the factory's model is left as it is
        model = realistic_weights(model, inputs, seed=args.seed)
    analysis = analyze(model, inputs)
    # the traced graph's own positional inputs (keyword inputs of a factory are bound to them)
    return model, analysis.traced.example_inputs, analysis


def _policy_columns(analysis, policy_arg: Optional[str]):
    if not policy_arg:
        return None, None, []
    from gdp_graph.policy import load_policy, resolve
    policy = load_policy(resolve_policy_argument(policy_arg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the resolution report below lists rules that match nothing
        res = resolve(policy, analysis.groups, analysis.blocks)
    reasons = {(k, i): r for k, i, r in res.ungated()}
    group_col, block_col = {}, {}
    for gid, s in res.group_settings.items():
        rules = ",".join(str(r) for r in s.rules) or "defaults"
        group_col[gid] = (f"{s.level} (rules {rules})" if ("group", gid) not in reasons
                          else f"ungated: {reasons[('group', gid)]}")
    for bid, s in res.block_settings.items():
        block_col[bid] = s.level if ("block", bid) not in reasons else f"ungated: {reasons[('block', bid)]}"
    return group_col, block_col, [res.report()]


def cmd_inspect(args: argparse.Namespace) -> int:
    from gdp_graph.graph.cost import CostModel
    from gdp_graph.report.tables import group_rows, print_inspect
    _, inputs, analysis = analyze_spec(args)
    cost = CostModel(analysis)
    shares = cost.group_shares()
    per_sample = batch_size(inputs)
    group_col, block_col, notes = _policy_columns(analysis, args.policy)
    drawn = None
    if args.draw:
        from gdp_graph.report.draw import draw_groups
        drawn = str(draw_groups(analysis, args.draw))
    if args.json:
        print_json({
            "groups": group_rows(analysis, shares),
            "blocks": [{"block": b.id, "name": b.name, "modules": b.modules, "prunable": b.prunable,
                        "identity_shortcut": b.shortcut_is_identity, "frozen": b.frozen_reasons}
                       for b in analysis.blocks],
            "opaque": [{"module": o.module, "reason": o.reason} for o in analysis.opaque],
            "front_end": {"name": analysis.traced.front_end, "reason": analysis.traced.front_end_reason},
            "flops_per_sample": cost.total.flops / per_sample, "params": cost.total.params,
            "policy": {"groups": group_col, "blocks": block_col, "report": notes} if args.policy else None,
            "drawing": drawn,
        })
        return EXIT_OK
    console = make_console(args)
    print_inspect(console, analysis, shares, title=args.spec, total_flops=cost.total.flops / per_sample,
                  total_params=cost.total.params, group_policy=group_col, block_policy=block_col, policy_notes=notes)
    if drawn:
        console.print(f"drawing of the channel groups written to {drawn}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from gdp_graph.graph.cost import model_cost
    from gdp_graph.prune.plan import random_plan
    from gdp_graph.prune.rewrite import VerifyWarning, apply_plan
    from gdp_graph.prune.verify import verify
    from gdp_graph.report.tables import print_check
    if not 0 <= args.ratio < 1:
        raise UsageError(f"--ratio must be in [0, 1), got {args.ratio}")
    if not 0 <= args.blocks <= 1:
        raise UsageError(f"--blocks must be in [0, 1], got {args.blocks}")
    _, inputs, analysis = analyze_spec(args, realistic=args.realistic_weights)
    if not analysis.prunable_groups():
        raise UsageError(f"{args.spec}: no prunable channel group "
                         "(every group is frozen; run 'gdp-graph inspect' to see why)")
    plan = random_plan(analysis, args.ratio, seed=args.seed, block_ratio=args.blocks)
    if args.meta:
        return _check_on_meta(args, analysis, plan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)  # the verdict is the exit code and the report
        # the GraphModule is what is checked; it takes the graph's positional inputs the cost uses
        applied = apply_plan(analysis, plan, tolerance=args.tolerance, keep_class=False)
    pruned = applied.model
    result = applied.verify or verify(analysis, plan, pruned, tolerance=args.tolerance)
    if result.inconclusive:  # neither "equal" nor "different": the check cannot tell
        hint = "" if args.realistic_weights else " (drop --no-realistic-weights, or give the model real weights)"
        raise UsageError(f"{args.spec}: cannot verify: {result.inconclusive}{hint}")
    # the traced graph is the same computation; FlopCounterMode sees inside fused modules there
    before, after = model_cost(analysis.traced.gm, inputs), model_cost(pruned, inputs)
    n = batch_size(inputs)
    out: dict[str, Any] = {
        "spec": args.spec, "ratio": args.ratio, "block_ratio": args.blocks, "seed": args.seed,
        "groups": len(analysis.groups), "prunable_groups": len(analysis.prunable_groups()),
        "groups_pruned": len(plan.keep), "removable_blocks": len([b for b in analysis.blocks if b.prunable]),
        "removed_blocks": sorted(plan.removed_blocks),
        "frozen": [{"group": g.id, "reason": g.describe_frozen()} for g in analysis.groups
                   if not (g.prunable and g.exact)],
        "opaque": [{"module": o.module, "reason": o.reason} for o in analysis.opaque],
        "params_before": before.params, "params_after": after.params,
        "flops_per_sample_before": before.flops / n, "flops_per_sample_after": after.flops / n,
        "max_abs_diff": result.max_abs_diff, "max_rel_diff": result.max_rel_diff,
        "tolerance": args.tolerance, "ok": result.ok, "plan_file": args.save_plan,
        "realistic_weights": args.realistic_weights, "inconclusive": result.inconclusive,
    }
    if args.metric == "latency":
        out.update(_latency_check(args, analysis, plan, pruned, inputs))
    if args.save_plan:
        plan.save(args.save_plan, analysis)  # with what it was made for: apply refuses another model
    if args.json:
        print_json(out)
    else:
        console = make_console(args)
        print_check(console, out)
        if args.metric == "latency":
            console.print(f"latency ratio: predicted {out['latency_predicted_ratio']:.3f}, measured "
                          f"{out['latency_measured_ratio']:.3f} (IQR {out['latency_measured_iqr'][0]:.3f}-"
                          f"{out['latency_measured_iqr'][1]:.3f}; 1 thread, batch {batch_size(inputs)})")
    return EXIT_OK if result.ok else EXIT_DIFFERENT


def _latency_check(args: argparse.Namespace, analysis, plan, pruned, inputs: tuple) -> dict[str, Any]:
    """The random plan's latency ratio as the table predicts it (1 thread, the inputs' batch;
    cached, else timed now) beside the ratio measured on the rewritten model."""
    from gdp_graph.latency import LatencySettings
    from gdp_graph.latency.predict import predict_plan
    from gdp_graph.report.latency import compare_latency
    predicted = predict_plan(analysis, plan, LatencySettings(batch=batch_size(inputs), cache=args.latency_cache),
                             show_progress=not args.json)
    measured = compare_latency(analysis.traced.gm, pruned, inputs, threads=1)
    return {"latency_predicted_ratio": predicted["ratio"], "latency_measured_ratio": measured.ratio,
            "latency_measured_iqr": [measured.ratio_q1, measured.ratio_q3]}


def _check_on_meta(args: argparse.Namespace, analysis, plan) -> int:
    """``check --meta``: the random plan for the shapes alone; nothing can run, so nothing is
    verified (apply the saved plan to the checkpoint to verify or stream it)."""
    from gdp_graph.graph.cost import CostModel
    cost = CostModel(analysis)
    out = {"spec": args.spec, "ratio": args.ratio, "block_ratio": args.blocks, "seed": args.seed, "meta": True,
           "groups": len(analysis.groups), "prunable_groups": len(analysis.prunable_groups()),
           "groups_pruned": len(plan.keep), "removable_blocks": len([b for b in analysis.blocks if b.prunable]),
           "removed_blocks": sorted(plan.removed_blocks), "params_before": cost.total.params,
           "verified": False, "plan_file": args.save_plan}
    if args.save_plan:
        plan.save(args.save_plan, analysis)  # the meta analysis has the real model's groups and blocks
    if args.json:
        print_json(out)
    else:
        console = make_console(args)
        console.print(f"{args.spec} on the meta device: {out['groups_pruned']} of {out['prunable_groups']} prunable "
                      f"groups pruned by {args.ratio}, {len(out['removed_blocks'])} of {out['removable_blocks']} "
                      f"removable blocks removed; not verified (no weights on the meta device)")
        if args.save_plan:
            console.print(f"plan written to {args.save_plan} (apply it: gdp-graph apply {args.spec} "
                          f"{args.save_plan} --out DIR)")
    return EXIT_OK


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("inspect", "show channel groups, removable blocks and opaque leaves (and what a policy gates)")
    add_model_arguments(p)
    add_meta_argument(p)
    add_output_arguments(p)
    p.add_argument("--policy", help="a YAML policy file or shipped policy name: "
                                    "show which groups and blocks each rule gates")
    p.add_argument("--draw", metavar="FILE", help="draw the channel groups on the model graph "
                                                  "(.svg or .png; needs the 'plot' extra)")
    p.set_defaults(func=cmd_inspect)

    p = add("check", "prune at random, rewrite and verify that outputs equal the gated reference "
                     "(exit 0 equal, 1 different, 2 error)")
    add_model_arguments(p)
    add_meta_argument(p)
    add_output_arguments(p)
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of every prunable group to remove")
    p.add_argument("--seed", type=int, default=0, help="seed of the random plan")
    p.add_argument("--blocks", type=float, default=0.5,
                   help="fraction of removable residual blocks to remove as well (0 removes none)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="allowed max |diff| relative to the output scale")
    p.add_argument("--metric", choices=("flops", "latency"), default="flops",
                   help="latency: also the plan's latency ratio as the table predicts it (timed on this machine, "
                        "1 thread, cached) beside the measured one")
    p.add_argument("--latency-cache", metavar="DIR", help="folder of the cached latency tables "
                                                          "(default ~/.cache/gdp-graph/latency)")
    p.add_argument("--save-plan", metavar="FILE",
                   help="write the random plan as JSON (re-apply it with 'gdp-graph apply')")
    p.add_argument("--realistic-weights", action=argparse.BooleanOptionalAction, default=True,
                   help="first redraw degenerate weights of a copy of the model (constant tensors: zero biases, "
                        "1e-6 layer scales, zero-initialised heads) and calibrate BatchNorm statistics, so that "
                        "equal outputs mean something (gdp_graph.prune.weights)")
    p.set_defaults(func=cmd_check)
