"""``prune SPEC --task TASK --policy POLICY --out DIR``: the declarative pipeline on your own
model: gates from the policy, the gated phase, finalize, optional fine-tuning, a report, and
pictures."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from gdp_graph.cli.common import (EXIT_MISSED, UsageError, add_model_arguments, finish_prune, make_console,
                                  resolve_device, resolve_policy_argument)
from gdp_graph.policy.settings import OPTIMIZERS
from gdp_graph.recipes.driver import Schedule
from gdp_graph.recipes.oneshot import ONE_SHOT_METHODS
from gdp_graph.vocabulary import METRICS


def _schedule(args: argparse.Namespace, task, policy) -> Any:
    """Each setting from the first that gives it: the flag, the policy's ``schedule`` section,
    the TASK's default, the built-in default."""
    base, planned = Schedule(), policy.schedule

    def pick(key: str, from_task: Optional[Any] = None) -> Any:
        for value in (getattr(args, key), getattr(planned, key), from_task):
            if value is not None:
                return value
        return getattr(base, key)

    epochs, steps = pick("epochs", task.epochs), pick("steps")
    if epochs < 1 and steps is None and args.method == "gdp":
        raise UsageError(f"--epochs must be at least 1 (the gated phase), got {epochs}")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    if args.calibration_batches < 1:
        raise UsageError(f"--calibration-batches must be at least 1, got {args.calibration_batches}")
    return Schedule(epochs=epochs, finetune_epochs=pick("finetune_epochs", task.finetune_epochs),
                    lr=pick("lr", task.lr), finetune_lr=pick("finetune_lr", task.finetune_lr),
                    gate_lr=pick("gate_lr"), optimizer=pick("optimizer"), weight_decay=pick("weight_decay"),
                    steps=steps, method=args.method, calibration_batches=args.calibration_batches)


def _budget_text(schedule: Any) -> str:
    if schedule.steps is not None:
        return (f"{schedule.steps} steps in all (gates up to the cut, then recovery)" if schedule.method == "gdp"
                else f"{schedule.steps} recovery steps")
    gated = f"{schedule.epochs} gated + " if schedule.method == "gdp" else ""
    return f"{gated}{schedule.finetune_epochs} fine-tuning epochs"


def _policy(args: argparse.Namespace):
    from gdp_graph.policy import load_policy, policy_from_dict
    policy = load_policy(resolve_policy_argument(args.policy))
    if args.metric is not None and args.metric != policy.target.metric:
        data = policy.to_dict()
        data["target"]["metric"] = args.metric
        policy = policy_from_dict(data, source=f"{policy.source} with --metric {args.metric}", name=policy.name)
    if args.target is None:
        return policy
    if not 0 < args.target <= 1:
        raise UsageError(f"--target {args.target:g}: the fraction of {policy.target.metric} to keep must be in (0, 1]")
    data = policy.to_dict()
    data["target"]["fraction"] = args.target
    return policy_from_dict(data, source=f"{policy.source} with --target {args.target:g}", name=policy.name)


def _per_sample(finalize_report: dict[str, Any], batch: int) -> dict[str, Any]:
    """Finalize's figures with FLOPs per sample (it counts them on the example batch)."""
    out = dict(finalize_report)
    for key in ("flops_before", "flops_after"):
        if key in out:
            out[key.replace("flops_", "flops_per_sample_")] = out.pop(key) / batch
    return out


def _warnings(result, policy, report: dict[str, Any]) -> list[str]:
    out = []
    fr = result.finalize_report
    if not fr.plan.keep and not fr.plan.removed_blocks:
        out.append("nothing was pruned: every gate stayed above the threshold (train longer, raise lambda, or "
                   "check with 'gdp-graph inspect --policy' that the policy gates something)")
    metric = policy.target.metric
    kept = report["cost"].get(f"{metric}_kept")
    if kept is not None and abs(kept - policy.target.fraction) > policy.target.tolerance:
        out.append(f"target missed: kept {kept:.3f} of {metric}, target {policy.target.fraction:g} "
                   f"± {policy.target.tolerance:g}")
    return out


def _pictures(folder: Path, history: dict[str, Any], tolerance: float) -> tuple[list[str], Optional[str]]:
    from gdp_graph.report.plots import PlotError, plot_gate_histograms, plot_trajectory
    try:
        return [str(plot_gate_histograms(history, folder / "gates.png")),
                str(plot_trajectory(history, folder / "trajectory.png", tolerance))], None
    except PlotError as exc:
        return [], str(exc)


def _own_class(result: Any, graph_module: bool) -> tuple[torch.nn.Module, str, list[str]]:
    """The pruned model as the user's own class where its forward reproduces the finalized (and
    fine-tuned) GraphModule on the example inputs, else the GraphModule; why not; hooks dropped."""
    if graph_module:
        return result.pruned, "--graph-module asked for the GraphModule", []
    if result.analysis is None:
        return result.pruned, "the pipeline kept no analysis of the model", []
    from gdp_graph.prune.keep_class import keep_class_of
    kept = keep_class_of(result.analysis, result.plan, result.pruned)
    if kept.model is None:
        return result.pruned, kept.reason, []
    return kept.model, "", kept.dropped_hooks


def _cost_summary(fr: Any, n: int) -> dict[str, float]:
    """Parameters and FLOPs per sample before and after, and the shares kept."""
    return {"flops_per_sample_before": fr.before.flops / n, "flops_per_sample_after": fr.after.flops / n,
            "params_before": fr.before.params, "params_after": fr.after.params,
            "flops_kept": fr.after.flops / fr.before.flops if fr.before.flops else 1.0,
            "params_kept": fr.after.params / fr.before.params if fr.before.params else 1.0}


def _print_summary(console: Any, layers: Any, cost: dict[str, float], result: Any, fr: Any, pruned_cpu: Any,
                   why_not_class: str, out: Path, pictures: list, why_not: str) -> None:
    from gdp_graph.report.layers import layers_table
    from gdp_graph.report.tables import before_after_table
    console.print(layers_table(layers))
    console.print(before_after_table([("parameters", cost["params_before"], cost["params_after"], "count"),
                                      ("FLOPs per sample", cost["flops_per_sample_before"],
                                       cost["flops_per_sample_after"], "count")], title="prune: before / after"))
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if v is not None)
    console.print(f"task metric: {scores or 'no eval_loader'}; finalize: {fr.check}")
    console.print(f"pruned model: {type(pruned_cpu).__name__}"
                  + (f" (a GraphModule: {why_not_class})" if why_not_class else " (the model's own class)"))
    console.print(f"wrote {out}/pruned.pt, plan.json, report.json"
                  + (f", {', '.join(Path(p).name for p in pictures)}" if pictures else f" (no pictures: {why_not})"))


def _heading(args: argparse.Namespace, policy: Any, schedule: Any, device: torch.device) -> Any:
    from gdp_graph.report.console import styled
    return styled((args.spec, "bold"), f" with task {args.task}; policy {policy.name} (method {schedule.method}"
                  + (f", {policy.regularizer.name}" if schedule.method == "gdp" else "")
                  + f", keep {policy.target.fraction:g} of {policy.target.metric}); " + _budget_text(schedule)
                  + (f"; distillation T {policy.distill.temperature:g}, alpha {policy.distill.alpha:g}"
                     if args.distill else "") + f" on {device}")


def _class_warnings(model: Any, why_not_class: str, dropped_hooks: Any, graph_module: bool) -> list[str]:
    warnings = []
    if why_not_class and not graph_module:
        warnings.append(f"the pruned model is a GraphModule, not {type(model).__name__}: {why_not_class}")
    if dropped_hooks:
        warnings.append(f"hooks on {', '.join(dropped_hooks)} are dropped with the removed branches")
    return warnings


def cmd_prune(args: argparse.Namespace) -> int:
    from gdp_graph.cli.spec import load_spec
    from gdp_graph.recipes.driver import run_prune
    from gdp_graph.recipes.task import batch_length, load_task, model_inputs, move_to
    from gdp_graph.report.layers import compare_layers
    from gdp_graph.report.live import GateProgress
    from gdp_graph.report.outputs import write_outputs
    device = resolve_device(args.device)
    policy = _policy(args)
    if args.task is None:  # one-shot from the weights alone
        from gdp_graph.cli.prune_oneshot import prune_without_task
        return prune_without_task(args, policy)
    torch.manual_seed(args.seed)
    model, inputs = load_spec(args.spec, args.input_shape, require_inputs=False)
    task = load_task(args.task)
    if inputs is None:  # the model's inputs on the first training batch
        args_, kwargs_ = model_inputs(task, next(iter(task.train_loader)))
        inputs = kwargs_ or args_
    schedule = _schedule(args, task, policy)
    console = make_console(args, stderr=args.json)
    console.print(_heading(args, policy, schedule, device))
    started = time.perf_counter()
    with GateProgress(console=console, disable=args.no_progress) as progress:
        result = run_prune(model, inputs, task, policy, schedule, device, on_progress=progress.update_phase,
                           distill=policy.distill if args.distill else None)
    fr = result.finalize_report
    n = max(batch_length(inputs), 1)
    cost = _cost_summary(fr, n)
    cpu_inputs = move_to(inputs, torch.device("cpu"))
    pruned, why_not_class, dropped_hooks = _own_class(result, args.graph_module)
    pruned_cpu = pruned.cpu().eval()
    layers = compare_layers(model.cpu().eval(), pruned_cpu, cpu_inputs)
    report: dict[str, Any] = {
        "spec": args.spec, "task": args.task, "policy": policy.name, "regularizer": policy.regularizer.name,
        "target": policy.target.fraction, "metric": policy.target.metric, "device": str(device),
        "method": schedule.method, "distill": asdict(policy.distill) if args.distill else None,
        "schedule": asdict(schedule),
        "task_metric": result.metrics, "cost": cost, "finalize": _per_sample(fr.to_dict(), n),
        "gates": result.gates_report,
        "history": result.history.to_dict(), "layers": layers, "seconds": result.seconds,
        "pruned_class": type(pruned_cpu).__name__, "kept_class_reason": why_not_class or None}
    report["warnings"] = _warnings(result, policy, report) + _class_warnings(model, why_not_class, dropped_hooks,
                                                                             args.graph_module)
    out = Path(args.out)
    write_outputs(out, pruned_cpu, result.plan, report, cpu_inputs, analysis=result.analysis)
    from gdp_graph.prune.hf_save import write_hf_folder  # a Hugging Face model: DIR/hf, save_pretrained
    report["hf"] = write_hf_folder(out / "hf", pruned_cpu, result.analysis, result.plan, tokenizer=task.tokenizer)
    pictures, why_not = ([], "--no-pictures") if args.no_pictures else _pictures(out, result.history.to_dict(True),
                                                                                 policy.target.tolerance)
    report["pictures"], report["seconds"]["total"] = pictures, time.perf_counter() - started
    return finish_prune(args, console, report, out, lambda: _print_summary(
        console, layers, cost, result, fr, pruned_cpu, why_not_class, out, pictures, why_not))


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("prune", "prune your own model: gates from a YAML policy, the gated phase, finalize, optional "
                     "fine-tuning; writes the pruned model, plan.json, report.json and pictures to --out")
    add_model_arguments(p)
    p.add_argument("--task", metavar="TASK",
                   help="file.py:factory or package.module:factory returning a gdp_graph.recipes.task.Task "
                        "(train_loader, loss(output, batch), optional eval_loader and metric); without it, "
                        "one-shot magnitude pruning of the weights alone (needs --input-shape or factory inputs)")
    p.add_argument("--policy", default="default", help="YAML policy file or shipped policy name")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--target", type=float, help="override the policy's target fraction to keep")
    p.add_argument("--metric", choices=METRICS,
                   help="override the policy's target metric (latency: measured on this machine per the policy's "
                        "latency: section, the table cached)")
    p.add_argument("--method", default="gdp", choices=("gdp", *ONE_SHOT_METHODS),
                   help="gdp: train gates (the policy's regularizer), then finalize; magnitude (weights), activation "
                        "(mean |activation| on training batches, Minitron), taylor (|gradient x gate|): one-shot "
                        "unit importance cut to the budget, no gate phase; depth: whole removable blocks only, by "
                        "block importance. Every method then gets the same recovery (default: gdp)")
    p.add_argument("--steps", type=int, help="step budget instead of epochs: gdp trains gates up to the cut "
                                             "(fix_at of the budget), then recovers the pruned model for the rest; "
                                             "one-shot methods recover for all of it (default: the policy's schedule)")
    p.add_argument("--distill", action="store_true",
                   help="logit distillation from the frozen original model during training: alpha * T^2 * KL + "
                        "(1 - alpha) * task loss (the policy's distill: {temperature, alpha}; default 2.0, 0.5)")
    p.add_argument("--calibration-batches", type=int, default=Schedule.calibration_batches,
                   help="training batches the one-shot importance (activation, taylor, depth; gdp's "
                        "regularizer.init) is measured on")
    for flag, kind, what in (("--epochs", int, "epochs of the gated phase"),
                             ("--finetune-epochs", int, "fine-tuning epochs after finalize"),
                             ("--lr", float, "weight learning rate in the gated phase"),
                             ("--finetune-lr", float, "learning rate of fine-tuning")):
        default = getattr(Schedule, flag[2:].replace("-", "_"))
        p.add_argument(flag, type=kind, help=f"{what} (default: the policy's schedule, the task's, else {default})")
    p.add_argument("--gate-lr", type=float,
                   help="gate learning rate (default: the policy's schedule, else the gates' own)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="weight optimizer: sgd (momentum 0.9) or adam (AdamW) "
                                                           "(default: the policy's schedule, else sgd)")
    p.add_argument("--weight-decay", type=float, help="weight decay of the weight optimizer (default: the policy's "
                                                      "schedule, else 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--seed", type=int, default=0, help="torch seed")
    p.add_argument("--strict", action="store_true",
                   help=f"exit {EXIT_MISSED} when the target is missed or nothing is pruned")
    p.add_argument("--graph-module", action="store_true",
                   help="save the pruned fx.GraphModule instead of the model's own class, which is saved where its "
                        "forward reproduces the GraphModule ('export --format source' traces the class with torch.fx, "
                        "so only a class fx cannot trace needs this)")
    p.add_argument("--no-pictures", action="store_true", help="do not draw gates.png and trajectory.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print report.json's content instead of tables")
    p.add_argument("--width", type=int, default=None, help="table width in columns")
    p.set_defaults(func=cmd_prune)
