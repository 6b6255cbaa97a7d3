"""``explain SPEC GROUP``: why a group's members are coupled (the ops between two members) and,
for a frozen group, the op that froze it."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from gdp_graph.cli.cmd_analysis import analyze_spec
from gdp_graph.cli.spec import add_meta_argument
from gdp_graph.cli.common import EXIT_OK, add_model_arguments, add_output_arguments, make_console, print_json


def _step_text(step: dict[str, Any]) -> str:
    what = step["target"] + (f" ({step['module_type']})" if step["module_type"] else f" [{step['op']}]")
    return f"{step['direction'] or ' '} {what}: {step['role']}"


def print_explanation(console, data: dict[str, Any]) -> None:
    from rich.table import Table

    from gdp_graph.report.console import styled
    console.print(styled((f"group {data['group']}", "bold"), f": {data['size']} {data['unit']}s, coupling "
                         f"{', '.join(data['couplings']) or 'none'}; {'prunable' if data['prunable'] else 'frozen'}"
                         + ("" if data["prunable"] else f" ({data['status']})")))
    table = Table(title="members", header_style="bold")
    for column in ("module or op", "role", "dim"):
        table.add_column(column)
    for m in data["members"]:
        table.add_row(m["target"], m["role"], str(m["dim"]))
    console.print(table)
    path = data["path"]
    if path["steps"]:
        first, last = path["steps"][0]["target"], path["steps"][-1]["target"]
        console.print(styled((f"why {first} and {last} are coupled", "bold"), " (the ops that carry the group's "
                             "channels between them; → data flows forward, ← backward):"))
        for step in path["steps"]:
            console.print("  " + _step_text(step))
    for origin in data["frozen"]:
        console.print(f"frozen: {origin['reason']}", style="yellow")
        if origin["path"]:
            console.print("  reached from the group's members through:")
            for step in origin["path"]:
                console.print("    " + _step_text(step))


def cmd_explain(args: argparse.Namespace) -> int:
    from gdp_graph.report.explain import explain_group
    _, _, analysis = analyze_spec(args)
    data = explain_group(analysis, args.group, args.source, args.target)
    if args.json:
        print_json(data)
    else:
        print_explanation(make_console(args), data)
    return EXIT_OK


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("explain", "why a channel group's members are coupled (op by op), and what froze a frozen group")
    add_model_arguments(p)
    add_meta_argument(p)
    p.add_argument("group", metavar="GROUP", type=int, help="group id, as 'gdp-graph inspect' lists them")
    p.add_argument("--from", dest="source", metavar="NAME", help="a member (module or fx node name); default: the two "
                                                                   "members farthest apart")
    p.add_argument("--to", dest="target", metavar="NAME", help="the other member")
    add_output_arguments(p)
    p.set_defaults(func=cmd_explain)
