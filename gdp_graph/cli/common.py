"""What every ``gdp-graph`` command shares: model arguments, the console, devices, policies,
one-line errors."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from rich.console import Console

from gdp_graph.report.console import terminal_console
from gdp_graph.errors import GdpError

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE = 0, 1, 2
EXIT_MISSED = 3  #: prune --strict: the target was missed or nothing was pruned


class UsageError(GdpError, ValueError):
    """A command-line argument cannot be used (the message names it)."""


def add_model_arguments(p: argparse.ArgumentParser, *, spec_help: Optional[str] = None) -> None:
    p.add_argument("spec", metavar="SPEC", help=spec_help or "package.module:factory or path/to/file.py:factory "
                   "(the factory returns a model or (model, example_inputs)), or hf:DIR / hf:owner/name "
                   "(a Hugging Face causal LM folder, or a hub name in the local cache; never downloaded)")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (overrides the factory's inputs)")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--width", type=int, default=None,
                   help="table width in columns (default: the terminal's; 200 when output is not a terminal)")


def make_console(args: argparse.Namespace, *, stderr: bool = False) -> Console:
    """A console that does not wrap tables at 80 columns when stdout is a pipe or a file."""
    return terminal_console(getattr(args, "width", None), stderr=stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``; an unavailable device is a usage error,
    not a traceback from deep inside torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r}: not a device name ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = ("this torch build has no CUDA support" if torch.version.cuda is None
                     else "no CUDA device is visible")
            raise UsageError(f"--device {name}: {built}; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available in this torch build or machine")
    return device


def resolve_policy_argument(text: str, flag: str = "--policy") -> str:
    """A policy file path or a shipped policy name; anything else is refused naming the shipped
    policies (instead of being read as YAML text and failing as 'expected a mapping')."""
    from gdp_graph.policy import available_policies
    if os.path.isfile(text):
        return text
    names = available_policies()
    if text in names:
        return text
    close = difflib.get_close_matches(text, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UsageError(f"{flag} {text}: no such file or shipped policy (shipped: {', '.join(names)}){hint}")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line policy reports joined by ' | ')."""
    # positions are 0:0 where a message comes from no file position (a dict, a flag override):
    # the message names the key path instead, so the zeros say nothing
    lines = [re.sub(r":0:0:", ":", line.strip()) for line in str(exc).splitlines() if line.strip()]
    text = " | ".join(lines[:4]) + (f" | … ({len(lines) - 4} more)" if len(lines) > 4 else "")
    return text or type(exc).__name__


def finish_prune(args: argparse.Namespace, console: Console, report: dict[str, Any], out: Path,
                 summary: Callable[[], None]) -> int:
    """The end of both ``prune`` paths: ``report.json`` written to ``out``, then the report
    (``--json``) or ``summary()``, every warning in yellow; the exit code (``EXIT_MISSED`` under
    ``--strict`` when there are warnings)."""
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if args.json:
        print_json(report)
    else:
        summary()
    for line in report["warnings"]:
        console.print(f"warning: {line}", style="yellow")
    return EXIT_MISSED if args.strict and report["warnings"] else EXIT_OK
