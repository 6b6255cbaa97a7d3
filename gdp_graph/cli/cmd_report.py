"""``report SPEC PRUNED``: the original model against its pruned version, layer by layer
(channels, parameters, FLOPs per sample) and in measured latency."""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from gdp_graph.cli.common import (EXIT_OK, UsageError, add_model_arguments, add_output_arguments, make_console,
                                  print_json)


def build_report(original: torch.nn.Module, pruned: torch.nn.Module, inputs: Any, *, latency: bool = True,
                 rounds: int = 21, repeat: int = 3, threads: int = 1) -> dict[str, Any]:
    """Totals, per-layer rows and (optionally) latency; ``inputs`` positional (a tuple) or keyword (a dict)."""
    from gdp_graph.report.latency import compare_latency
    from gdp_graph.report.layers import compare_layers, total_figures
    flops_before, params_before = total_figures(original, inputs)
    flops_after, params_after = total_figures(pruned, inputs)
    report: dict[str, Any] = {
        "params_before": params_before, "params_after": params_after,
        "flops_per_sample_before": flops_before, "flops_per_sample_after": flops_after,
        "layers": compare_layers(original, pruned, inputs), "latency": None}
    if latency:
        report["latency"] = compare_latency(original, pruned, inputs, rounds=rounds, repeat=repeat,
                                            threads=threads).to_dict()
    return report


def print_report(console, report: dict[str, Any], title: str) -> None:
    from gdp_graph.report.layers import layers_table
    from gdp_graph.report.tables import before_after_table
    rows = [("parameters", report["params_before"], report["params_after"], "count"),
            ("FLOPs per sample", report["flops_per_sample_before"], report["flops_per_sample_after"], "count")]
    lat = report.get("latency")
    if lat:
        rows.append((f"latency, batch {lat['batch']} (ms, median)", lat["baseline"]["median_ms"],
                     lat["candidate"]["median_ms"], "ms"))
    console.print(layers_table(report["layers"]))
    console.print(before_after_table(rows, title=title))
    predicted = report.get("latency_predicted")
    if predicted:
        console.print(f"latency ratio predicted by the table: {predicted['ratio']:.3f} "
                      f"({predicted['before_ms']:.2f} -> "
                      f"{predicted['after_ms']:.2f} ms, {predicted['threads']} thread(s), batch {predicted['batch']})")
    from gdp_graph.cli.prune_oneshot import print_loop
    print_loop(console, report.get("latency_loop"))
    if lat:
        note = (f"latency ratio {lat['ratio']:.3f} (median of per-round ratios; IQR {lat['ratio_q1']:.3f}-"
                f"{lat['ratio_q3']:.3f}; {lat['baseline']['rounds']} interleaved rounds x {lat['repeat']} forwards, "
                f"{lat['threads']} thread(s))")
        if lat["significant"]:
            console.print(note)
        else:
            console.print(f"{note}: NOT SIGNIFICANT, the spread exceeds the effect", style="yellow")


def _predicted(args: argparse.Namespace, original: torch.nn.Module, inputs: Any) -> dict[str, Any]:
    """The latency table's prediction for the folder's plan.json, on the measurement's threads and
    batch (the table cached, else timed now)."""
    from gdp_graph.cli.cmd_analysis import batch_size
    from gdp_graph.graph.analysis import analyze
    from gdp_graph.latency import LatencySettings
    from gdp_graph.latency.predict import predict_plan
    from gdp_graph.report.outputs import load_plan
    analysis = analyze(original, inputs)
    settings = LatencySettings(threads=args.threads, batch=batch_size(analysis.traced.example_inputs),
                               cache=args.latency_cache)
    return predict_plan(analysis, load_plan(args.pruned), settings, show_progress=not args.json)


def _loop_rounds(pruned: str) -> Any:
    """The closed latency loop's rounds that ``prune`` recorded in the folder's report.json (the
    table's prediction against the measurement, per correction), or None."""
    import json

    from gdp_graph.report.outputs import pruned_path
    path = pruned_path(pruned).parent / "report.json"
    try:
        return json.loads(path.read_text()).get("latency_loop") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def _check_same_model(args: argparse.Namespace, original: torch.nn.Module, inputs: Any) -> None:
    """A pruned folder whose plan.json says which model it was made for is compared with that
    model only (the per-layer table of another model's pruning would be silently wrong)."""
    from gdp_graph.graph.analysis import analyze
    from gdp_graph.prune.plan import model_fingerprint
    from gdp_graph.report.outputs import PLAN_FILE, load_plan, pruned_path
    folder = pruned_path(args.pruned).parent
    if not (folder / PLAN_FILE).is_file():
        return
    made_for = load_plan(folder).made_for
    if made_for is not None and dict(made_for) != model_fingerprint(analyze(original, inputs)):
        raise UsageError(f"{args.pruned} was pruned from another model than {args.spec} "
                         f"(its {PLAN_FILE} was made for {len(made_for.get('group_sizes', []))} groups of sizes "
                         f"{list(made_for.get('group_sizes', []))[:8]})")


def cmd_report(args: argparse.Namespace) -> int:
    from gdp_graph.cli.spec import load_spec
    from gdp_graph.report.outputs import load_pruned
    original, inputs = load_spec(args.spec, args.input_shape)
    pruned = load_pruned(args.pruned)
    _check_same_model(args, original, inputs)
    report = build_report(original.eval(), pruned, inputs, latency=not args.no_latency, rounds=args.rounds,
                          repeat=args.repeat, threads=args.threads)
    report.update(spec=args.spec, pruned=str(args.pruned))
    if args.predict:
        report["latency_predicted"] = _predicted(args, original, inputs)
    report["latency_loop"] = _loop_rounds(args.pruned)
    if args.json:
        print_json(report)
    else:
        print_report(make_console(args), report, f"{args.spec} vs {args.pruned}")
    return EXIT_OK


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("report", "compare the original model with a pruned one: per layer, totals, measured latency")
    add_model_arguments(p)
    p.add_argument("pruned", metavar="PRUNED", help="pruned.pt or the folder that 'prune'/'apply' wrote")
    add_output_arguments(p)
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    p.add_argument("--repeat", type=int, default=3, help="forwards per model per round")
    p.add_argument("--threads", type=int, default=1, help="torch threads during the measurement")
    p.add_argument("--predict", action="store_true",
                   help="also show the latency the table predicts for PRUNED's plan.json (the table is timed on this "
                        "machine at --threads and the inputs' batch, once, then cached)")
    p.add_argument("--latency-cache", metavar="DIR", help="folder of the cached latency tables "
                                                          "(default ~/.cache/gdp-graph/latency)")
    p.set_defaults(func=cmd_report)
