"""``apply SPEC PLAN --out DIR``: apply a saved plan (from ``check --save-plan``, ``prune`` or
``PruningPlan.save``) to the model, verify it and save the pruned model.

``apply hf:DIR PLAN --out OUT`` streams instead: the plan is checked against the model built from
``DIR/config.json`` on the meta device, and the checkpoint's safetensors shards are sliced tensor
by tensor into ``OUT`` (:mod:`gdp_graph.prune.stream`), never loading the model."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Callable

from gdp_graph.cli.cmd_analysis import analyze_spec, batch_size
from gdp_graph.cli.common import (EXIT_DIFFERENT, EXIT_OK, UsageError, add_model_arguments, add_output_arguments,
                                  make_console, print_json)
from gdp_graph.cli.spec import is_hf_spec


def parse_size(text: str) -> int:
    """``400MB``, ``2GB``, ``512KB`` or a byte count -> bytes (powers of 1024)."""
    units = {"KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30}
    upper = text.strip().upper()
    unit = next((u for u in units if upper.endswith(u)), None)
    try:
        value = float(upper[:-2]) * units[unit] if unit else float(upper)
    except ValueError:
        raise UsageError(f"--max-shard-size {text!r}: expected a size like 400MB or 2GB") from None
    if value <= 0:
        raise UsageError(f"--max-shard-size {text!r}: must be positive")
    return int(value)


def cmd_stream(args: argparse.Namespace) -> int:
    """``apply hf:DIR PLAN --out OUT``: everything is checked before anything is written."""
    from gdp_graph.cli.spec import hf_folder, load_hf
    from gdp_graph.graph.analysis import analyze
    from gdp_graph.prune.slices import slice_map
    from gdp_graph.prune.stream import check_fits, read_checkpoint, stream_apply
    from gdp_graph.report.outputs import load_plan
    plan = load_plan(args.plan)
    max_shard = parse_size(args.max_shard_size)
    checkpoint = read_checkpoint(hf_folder(args.spec))
    model, inputs = load_hf(args.spec, args.input_shape, meta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warnings of the meta model
        analysis = analyze(model, inputs)
    smap = slice_map(analysis, plan, constants=False)  # validates the plan: one made for another model fails here
    check_fits(checkpoint, {n: tuple(t.shape) for n, t in model.state_dict().items()}, smap)
    config, rename = _pruned_config(args, model, analysis, plan, checkpoint, smap)
    report = stream_apply(checkpoint, smap, args.out, config_text=config.to_json_string(use_diff=True),
                          rename=rename, max_shard_bytes=max_shard,
                          extra_files={"gdp_plan.json": json.dumps(plan.to_dict(), indent=1) + "\n"})
    changes = {k: v for k, v in config.to_dict().items() if model.config.to_dict().get(k) != v}
    data = {"spec": args.spec, "plan": str(args.plan), "streamed": True, "groups_pruned": len(plan.keep),
            "removed_blocks": sorted(plan.removed_blocks), "config_changes": changes, **report.to_dict()}
    if args.json:
        print_json(data)
    else:
        make_console(args).print(
            f"streamed {report.tensors} tensors into {report.shards} shard(s) in {report.seconds:.1f} s: parameters "
            f"{report.params_before:,} -> {report.params_after:,}; config {changes}; written to "
            f"{report.out}/ (not verified here: load it with AutoModelForCausalLM.from_pretrained)")
    return EXIT_OK


def _pruned_config(args: argparse.Namespace, model, analysis, plan, checkpoint, smap):
    """The pruned config (``prune.hf_config``, as ``save_pretrained`` of the in-memory model
    writes it) and the tensor renames (removed layers dropped, the rest renumbered); refused,
    before anything is written, where no plain config builds the pruned shapes."""
    import torch

    from gdp_graph.prune.hf_config import pruned_hf_config, rename_key
    from gdp_graph.prune.stream import pruned_shapes, shape_mismatch
    config, renames = pruned_hf_config(model.config, analysis, plan)
    rename = (lambda name: rename_key(name, renames)) if renames else None
    refused = _refusal(config)
    if getattr(config, "gdp_layers", None) is not None:
        why = "its layers keep different widths"
    elif refused:
        why = f"transformers refuses the pruned config: {refused}"
    else:
        with torch.device("meta"):
            why = shape_mismatch(type(model)(config), pruned_shapes(checkpoint, smap, rename))
    if why:
        raise UsageError(f"{args.plan}: no plain config.json describes the pruned model ({why}); the streaming "
                         f"writer takes plans whose layers keep the same widths and lose whole layers only "
                         f"(save such a model in memory: gdp-graph prune --out)")
    return config, rename


def _refusal(config) -> str:
    """Why transformers' own checks refuse ``config`` (a Llama's hidden size must be a multiple
    of its heads, even with head_dim given), or ""."""
    validate = getattr(config, "validate", None)
    try:
        if callable(validate):
            validate()
    except Exception as exc:  # noqa: BLE001 - any refusal: from_pretrained would fail the same way
        return str(exc).strip().splitlines()[-1].strip()
    return ""


def cmd_apply(args: argparse.Namespace) -> int:
    if is_hf_spec(args.spec) and args.out:
        return cmd_stream(args)
    from gdp_graph.graph.cost import model_cost
    from gdp_graph.prune.rewrite import VerifyWarning, apply_plan
    from gdp_graph.prune.verify import verify
    from gdp_graph.report.outputs import load_plan, write_outputs
    from gdp_graph.report.tables import before_after_table
    plan = load_plan(args.plan)
    _, inputs, analysis = analyze_spec(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)  # the verdict is the exit code
        # the GraphModule: it takes the graph's positional inputs saved for 'export' (source too)
        applied = apply_plan(analysis, plan, tolerance=args.tolerance, keep_class=False)
    pruned = applied.model
    result = applied.verify or verify(analysis, plan, pruned, tolerance=args.tolerance)
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
    p.add_argument("--out", metavar="DIR", help="write DIR/pruned.pt, DIR/plan.json and DIR/report.json; with an "
                                                "hf: SPEC, stream the pruned safetensors checkpoint into DIR instead")
    p.add_argument("--max-shard-size", default="400MB", help="hf: streaming: the largest output shard (memory "
                                                             "peaks at about one shard plus one tensor)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="allowed max |diff| relative to the output scale")
    p.set_defaults(func=cmd_apply)
