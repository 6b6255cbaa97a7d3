"""Text in square brackets survives every printing path: rich reads ``[plot]`` or ``[a]`` as a
style tag and drops it (or fails on a stray ``[/b]``), so the console never reads markup and
styling is explicit. Each command runs on a model file and outputs under a folder whose name is
bracketed, and prints the path as it is."""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from pathlib import Path

import pytest

from gdp_graph.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
BRACKETED = "[a] runs[/b]"  # a tag rich would drop, and a closing tag it would fail on


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("messages") / BRACKETED
    where.mkdir(parents=True)  # "[a] runs[" holding "b]"
    shutil.copy(ROOT / "tests" / "fixtures" / "synthetic_task.py", where / "net.py")
    return where


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main([*argv, "--width", "400"]) if "--json" not in argv else main(list(argv))
    out, err = capsys.readouterr()
    return code, " ".join((out + err).split())  # a table title wraps at its table's width


@pytest.fixture(scope="module")
def pruned(folder, tmp_path_factory) -> Path:
    """``prune`` without matplotlib: its hint names the extra in brackets (capsys is per test,
    so this module-wide run captures its output itself)."""
    out = folder / "prune[x]"
    saved = sys.modules.get("matplotlib")
    sys.modules["matplotlib"] = None  # import matplotlib -> ImportError
    try:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            code = main(["prune", f"{folder}/net.py:model", "--task", f"{folder}/net.py:task", "--epochs", "1",
                         "--finetune-epochs", "0", "--out", str(out), "--no-progress", "--width", "400"])
    finally:
        if saved is None:
            del sys.modules["matplotlib"]
        else:
            sys.modules["matplotlib"] = saved
    text = buffer.getvalue()
    assert code == 0, text
    assert "pip install 'gdp-graph[plot]'" in text, text
    assert f"{out}/pruned.pt" in text and f"{folder}/net.py:model" in text, text
    return out


def test_inspect_and_check_print_bracketed_paths(folder, capsys):
    spec = f"{folder}/net.py:model"
    code, text = run(capsys, "inspect", spec)
    assert code == 0 and spec in text, text
    plan = folder / "plan[1].json"
    code, text = run(capsys, "check", spec, "--ratio", "0.5", "--save-plan", str(plan))
    assert code == 0 and f"plan written to {plan}" in text, text
    code, text = run(capsys, "apply", spec, str(plan), "--out", str(folder / "applied[2]"))
    assert code == 0 and f"apply {plan}" in text and f"{folder}/applied[2]" in text, text


def test_explain_prints_bracketed_text(folder, capsys):
    code, text = run(capsys, "explain", f"{folder}/net.py:model", "0")
    assert code == 0 and "group 0" in text, text


def test_prune_export_and_report_print_bracketed_paths(folder, pruned, capsys):
    code, text = run(capsys, "export", str(pruned), "--format", "torchscript")
    assert code == 0 and str(pruned) in text, text
    code, text = run(capsys, "report", f"{folder}/net.py:model", str(pruned), "--rounds", "3", "--repeat", "1")
    assert code == 0 and f"{folder}/net.py:model vs {pruned}" in text, text


def test_an_error_quoting_bracketed_text_is_printed_whole(folder, capsys):
    code = main(["check", f"{folder}/missing[3].py:model"])
    out, text = capsys.readouterr()
    assert code == 2 and not out and text.count("\n") == 1 and "missing[3].py" in text and BRACKETED in text, text


def test_styled_lines_and_tables_keep_brackets():
    import io

    from rich.table import Table

    from gdp_graph.report.console import styled, terminal_console
    from gdp_graph.report.live import GateProgress
    from gdp_graph.report.tables import before_after_table
    console = terminal_console(200)
    console.file = io.StringIO()
    console.print(styled(("runs/[a]/x", "bold"), " [/b] tail"))
    console.print("warning: [yellow]", style="yellow")
    console.print(before_after_table([("layer[0]", 1, 2, "count")], title="apply runs/[a]/plan.json"))
    table = Table(title="t[x]")
    table.add_column("module[0]")
    table.add_row("blocks[1].attn")
    console.print(table)
    with GateProgress(console=console, disable=False, auto_refresh=False) as progress:
        progress.add_task("phase [gdp]", total=2, status="[x] kept")
        progress.refresh()
    text = console.file.getvalue()
    for fragment in ("runs/[a]/x [/b] tail", "warning: [yellow]", "layer[0]", "apply runs/[a]/plan.json", "t[x]",
                     "module[0]", "blocks[1].attn", "phase [gdp]", "[x] kept"):
        assert fragment in text, (fragment, text)


def test_no_print_through_the_console_relies_on_markup():
    """The console prints strings as they are, so a style tag in a printed literal would show
    as text: styling goes through ``style=`` or ``report.console.styled``."""
    import re
    tag = re.compile(r"\.print\(.*[\"'].*\[/?(bold|dim|italic|red|green|yellow|blue|cyan|magenta)\b[^\]]*\]|\[/\]")
    found = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "gdp_graph").rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if tag.search(line)]
    assert not found, found
