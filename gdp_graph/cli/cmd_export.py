"""``export PRUNED --format source|torchscript|onnx|pt2``: write a pruned model in a format that
runs without gdp_graph, then load it back and check it computes what the pruned model does."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from gdp_graph.cli.common import EXIT_DIFFERENT, EXIT_OK, UsageError, add_output_arguments, make_console, print_json

FORMATS = ("source", "torchscript", "onnx", "pt2")
SUFFIX = {"source": "", "torchscript": ".ts", "onnx": ".onnx", "pt2": ".pt2"}


def _run(model: Any, inputs: Sequence[Any]) -> Any:
    with torch.no_grad():
        return model(*inputs)


def export_source(module: nn.Module, target: Path, inputs: Sequence[Any]) -> Any:
    from gdp_graph.prune.export import export_source as write_source
    write_source(module, target)
    name = f"_gdp_exported_{abs(hash(str(target.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, target / "__init__.py",
                                                  submodule_search_locations=[str(target)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return _run(package.PrunedModel().eval(), inputs)


def export_torchscript(module: nn.Module, target: Path, inputs: Sequence[Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        scripted = torch.jit.trace(module, tuple(inputs), check_trace=False)
        torch.jit.save(scripted, str(target))
        return _run(torch.jit.load(str(target)), inputs)


def export_pt2(module: nn.Module, target: Path, inputs: Sequence[Any]) -> Any:
    program = torch.export.export(module, tuple(inputs))
    torch.export.save(program, target)
    return _run(torch.export.load(target).module(), inputs)


def export_onnx(module: nn.Module, target: Path, inputs: Sequence[Any]) -> Any:
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        raise UsageError("--format onnx needs the 'onnx' extra: pip install 'gdp-graph[onnx]'")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" notices on every export
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(inputs), str(target), dynamo=True, external_data=False, verbose=False)
    finally:
        exporter_log.setLevel(level)
    import onnx
    onnx.checker.check_model(str(target))
    if importlib.util.find_spec("onnxruntime") is None:
        return None  # structurally checked; numerically checked only with onnxruntime installed
    import onnxruntime
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    feeds = {i.name: v.detach().cpu().numpy() for i, v in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


EXPORTERS: dict[str, Callable[[nn.Module, Path, Sequence[Any]], Any]] = {
    "source": export_source, "torchscript": export_torchscript, "onnx": export_onnx, "pt2": export_pt2}


def cmd_export(args: argparse.Namespace) -> int:
    from gdp_graph.cli.spec import parse_shape
    from gdp_graph.prune.verify import compare_outputs
    from gdp_graph.report.outputs import load_inputs, load_pruned, pruned_path
    module = load_pruned(args.pruned)
    if args.input_shape:
        inputs = (torch.randn(parse_shape(args.input_shape), generator=torch.Generator().manual_seed(0)),)
    else:
        inputs = load_inputs(args.pruned)
        if inputs is None:
            raise UsageError(f"{args.pruned}: no example_inputs.pt next to the model; pass --input-shape")
    target = Path(args.out) if args.out else pruned_path(args.pruned).parent / f"pruned{SUFFIX[args.format]}"
    existed = target.exists()
    try:
        exported = EXPORTERS[args.format](module, target, inputs)
    except Exception as exc:  # noqa: BLE001 - the exporter's own error, named with the format
        if not existed:  # nothing half-written: what the failed export began goes
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"--format {args.format}: exporting {args.pruned} failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    result = compare_outputs(_run(module, inputs), exported, args.tolerance) if exported is not None else None
    out = {"pruned": str(args.pruned), "format": args.format, "path": str(target),
           "checked": result is not None, "max_abs_diff": result.max_abs_diff if result else None,
           "ok": result.ok if result else None}
    if args.json:
        print_json(out)
    else:
        console = make_console(args)
        console.print(f"{args.format}: wrote {target}")
        console.print(f"loaded back and compared with the pruned model: {result}" if result else
                      "checked with onnx.checker (install onnxruntime to compare outputs)")
    return EXIT_OK if result is None or result.ok else EXIT_DIFFERENT


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("export", "export a pruned model (source, torchscript, onnx, pt2) and check the export computes the same")
    p.add_argument("pruned", metavar="PRUNED", help="pruned.pt or the folder that 'prune'/'apply' wrote")
    p.add_argument("--format", choices=FORMATS, default="source",
                   help="source: a Python package (plain torch); torchscript: torch.jit.trace; "
                        "onnx: needs the 'onnx' extra; pt2: torch.export")
    p.add_argument("--out", metavar="PATH",
                   help="output path (default: next to PRUNED: pruned/, pruned.ts, pruned.onnx, pruned.pt2)")
    p.add_argument("--input-shape", help="example input shape (default: the example_inputs.pt saved with the model)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="allowed max |diff| relative to the output scale")
    add_output_arguments(p)
    p.set_defaults(func=cmd_export)
