"""No function or method in ``gdp_graph/`` is longer than :data:`LIMIT` lines (decorators and
docstring included), except the ones listed in :data:`ALLOWED`, which may only shrink."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gdp_graph"
LIMIT = 60

#: "path/inside/gdp_graph.py::function": the most lines it may have until it is split. Remove an
#: entry once its function is at most LIMIT lines; never add one.
ALLOWED: dict[str, int] = {}


def _lengths() -> dict[str, int]:
    """{"path::name": lines} for every function and method of the package (nested ones too)."""
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                key = f"{rel}::{node.name}"
                found[key] = max(found.get(key, 0), node.end_lineno - start + 1)
    return found


def test_no_function_is_over_the_limit() -> None:
    too_long = {key: n for key, n in _lengths().items() if n > LIMIT and n > ALLOWED.get(key, 0)}
    assert not too_long, f"functions over {LIMIT} lines (split them): {too_long}"


def test_the_allow_list_only_shrinks() -> None:
    """Its caps are over the limit (growth past a cap fails the test above)."""
    assert all(n > LIMIT for n in ALLOWED.values())
