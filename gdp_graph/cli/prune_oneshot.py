"""``prune SPEC --input-shape 1,3,224,224 --method magnitude --metric latency --target 0.5 --out DIR``
without a task: one-shot importance from the weights alone, cut to the budget (any metric, the
measured latency included), rewritten, saved. Methods that look at data (activation, taylor,
depth) and every training phase still need ``--task``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from gdp_graph.cli.common import UsageError, finish_prune, make_console

#: one-shot methods that need no batches
TASKLESS = ("magnitude",)


def prune_without_task(args: argparse.Namespace, policy: Any) -> int:
    """The one-shot pipeline of ``gdp-graph prune`` when no ``--task`` is given."""
    from gdp_graph.cli.spec import load_spec
    from gdp_graph.graph.analysis import analyze
    from gdp_graph.graph.cost import CostModel, model_cost
    from gdp_graph.importance import one_shot_plan, score_units
    from gdp_graph.policy import resolve
    from gdp_graph.prune.rewrite import rewrite
    from gdp_graph.report.outputs import write_outputs
    method = getattr(args, "method", None) or "magnitude"
    if method not in TASKLESS:
        raise UsageError(f"--method {method} needs --task (batches to train or calibrate on); without a task: "
                         f"--method {' or '.join(TASKLESS)}")
    if getattr(args, "finetune_epochs", None) or getattr(args, "epochs", None) or getattr(args, "steps", None):
        raise UsageError("--epochs/--finetune-epochs/--steps train the model: they need --task")
    started = time.perf_counter()
    console = make_console(args, stderr=args.json)
    model, inputs = load_spec(args.spec, args.input_shape)
    analysis = analyze(model, inputs)
    inputs = analysis.traced.example_inputs
    resolution = resolve(policy, analysis.groups, analysis.blocks)
    cost_model = CostModel(analysis)
    metric = policy.target.metric
    if metric == "latency":
        from gdp_graph.latency import attach_latency, load_or_build
        table = load_or_build(analysis, policy.latency, cost_model=cost_model, show_progress=not args.no_progress,
                              console=console)
        attach_latency(cost_model, table)
        step = int(table.extra.get("channel_step", 1))
        if step > 1 and policy.defaults.round_to % step:
            console.print(f"hint: convolutions on this device take as long for any width up to the next multiple of "
                          f"{step} channels: defaults.round_to: {step} keeps only widths that pay off", style="yellow")
    scores = score_units(analysis, method)
    keep_class = None if not args.graph_module else False
    loop = None
    if metric == "latency" and policy.latency.corrections > 0:
        from gdp_graph.importance import one_shot_to_latency
        loop = one_shot_to_latency(analysis, scores, resolution, cost_model, model,
                                   build=lambda p: rewrite(analysis, p, keep_class=keep_class).eval(),
                                   on_round=lambda r: console.print(
                                       f"latency: aimed at {r.aim:.3f}, predicted {r.predicted:.3f}, "
                                       f"measured {r.measured.ratio:.3f}"))
        plan, kept, pruned = loop.plan, loop.predicted, loop.model
    else:
        plan, kept = one_shot_plan(analysis, scores, resolution, cost_model=cost_model)
        pruned = rewrite(analysis, plan, keep_class=keep_class).eval()
    before, after = model_cost(analysis.traced.gm, inputs), model_cost(pruned, inputs)
    report = _report(args, policy, method, before, after, kept, cost_model, plan, pruned, loop)
    report["seconds"] = {"total": time.perf_counter() - started}
    out = Path(args.out)
    write_outputs(out, pruned, plan, report, inputs, analysis=analysis)
    return finish_prune(args, console, report, out, lambda: _print(console, report, out))


def _report(args: argparse.Namespace, policy: Any, method: str, before: Any, after: Any, kept: float,
            cost_model: Any, plan: Any, pruned: Any, loop: Any = None) -> dict[str, Any]:
    """``kept``: the table's prediction; with a closed loop (``loop``), the target is checked
    against the measured ratio and every round is in ``latency_loop``."""
    from dataclasses import asdict
    metric = policy.target.metric
    cost = {"params_before": before.params, "params_after": after.params,
            "flops_before": before.flops, "flops_after": after.flops,
            "flops_kept": after.flops / before.flops if before.flops else 1.0,
            "params_kept": after.params / before.params if before.params else 1.0}
    if metric == "latency":
        predicted = cost_model.plan_cost(plan.keep, sorted(plan.removed_blocks))
        cost.update(latency_before_s=cost_model.total.latency, latency_after_s=predicted.latency, latency_kept=kept)
    if loop is not None:
        cost["latency_measured"] = loop.measured
    warnings = []
    if not plan.keep and not plan.removed_blocks:
        warnings.append("nothing was pruned: the policy gates nothing the budget lets go")
    landed, how = (loop.measured, " (measured)") if loop is not None else (kept, "")
    if abs(landed - policy.target.fraction) > policy.target.tolerance:
        warnings.append(f"target missed: kept {landed:.3f} of {metric}{how}, target {policy.target.fraction:g} "
                        f"± {policy.target.tolerance:g}")
    return {"spec": args.spec, "task": None, "method": method, "policy": policy.name, "target": policy.target.fraction,
            "metric": metric, "kept": kept, "cost": cost, "plan": plan.summary(cost_model.analysis),
            "latency": asdict(policy.latency) if metric == "latency" else None,
            "latency_loop": loop.to_dict() if loop is not None else None,
            "pruned_class": type(pruned).__name__, "warnings": warnings}


def _print(console: Any, report: dict[str, Any], out: Path) -> None:
    from gdp_graph.report.tables import before_after_table
    cost = report["cost"]
    rows = [("parameters", cost["params_before"], cost["params_after"], "count"),
            ("FLOPs", cost["flops_before"], cost["flops_after"], "count")]
    if "latency_before_s" in cost:
        rows.append(("latency, predicted (ms)", 1e3 * cost["latency_before_s"], 1e3 * cost["latency_after_s"], "ms"))
    console.print(before_after_table(rows, title=f"prune ({report['method']}, no task): before / after"))
    console.print(f"kept {report['kept']:.3f} of {report['metric']} (target {report['target']:g}); pruned model: "
                  f"{report['pruned_class']}")
    print_loop(console, report.get("latency_loop"))
    console.print(f"wrote {out}/pruned.pt, plan.json, report.json")


def print_loop(console: Any, loop: Any) -> None:
    """The rounds of a closed latency loop (``report.json``'s ``latency_loop``), if any."""
    if not loop:
        return
    console.print(f"latency target {loop['target']:g}: predicted by the table against measured (median of "
                  f"interleaved rounds), per correction:")
    for i, r in enumerate(loop["rounds"]):
        mark = "*" if i == loop["chosen"] else " "
        console.print(f"{mark} round {i}: aimed at {r['aim']:.3f}, predicted {r['predicted']:.3f}, measured "
                      f"{r['measured']:.3f} [IQR {r['iqr'][0]:.3f}-{r['iqr'][1]:.3f}]")
