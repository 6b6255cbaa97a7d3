"""The ``gdp-graph`` command: inspect, check, explain, prune, apply, export and report.

Exit codes: 0 success, 1 the pruned model's outputs differ from the gated reference, 2 bad
input or any other error (one line on stderr; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Optional, Sequence

from rich_argparse import RichHelpFormatter

from gdp_graph import __version__
from gdp_graph.cli import cmd_analysis, cmd_apply, cmd_explain, cmd_export, cmd_prune, cmd_report, cmd_train
from gdp_graph.cli.common import EXIT_USAGE, UsageError, one_line
from gdp_graph.errors import GdpError

__all__ = ["build_parser", "main", "UsageError"]


class HelpFormatter(RichHelpFormatter):
    """Rich help that shows each option's default, except where there is none to show (flags,
    options without a default) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or "default" in text \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    formatter = HelpFormatter
    parser = argparse.ArgumentParser(prog="gdp-graph", description=__doc__.splitlines()[0].replace("``", ""),
                                     formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"gdp-graph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=formatter)

    cmd_analysis.register(add)
    cmd_explain.register(add)
    cmd_prune.register(add)
    cmd_apply.register(add)
    cmd_export.register(add)
    cmd_report.register(add)
    cmd_train.register(add)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - every error is one line (exit 2); --debug for the rest
        if getattr(args, "debug", False):
            traceback.print_exc()
        if isinstance(exc, GdpError):
            print(f"gdp-graph: error: {one_line(exc)}", file=sys.stderr)
        else:
            hint = "" if getattr(args, "debug", False) else " (run with --debug for the traceback)"
            print(f"gdp-graph: error: {type(exc).__name__}: {one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # `python -m gdp_graph.cli.main`, as the tests run it
    sys.exit(main())
