"""The package layout follows the pipeline: each stage imports only the stages before it, and no
module imports itself back through others (no import cycle, lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "gdp_graph"
#: the stages in dependency order: a stage may import those before it, never those after
STAGES = ["errors", "vocabulary", "graph", "prune", "policy", "latency", "gates", "importance", "report", "integrations", "recipes", "cli"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every ``gdp_graph`` module ``path`` imports, at any depth (function-level imports too)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gdp_graph")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("gdp_graph"):
                found.add(module)
    return found


def _graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph.add_node(name)
        for target in _imports(path, name):
            if target != name and target != "gdp_graph":
                graph.add_edge(name, target)
    return graph


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycle():
    graph = _graph()
    # a package's __init__ re-exports its own modules: that edge is not a dependency back
    graph.remove_edges_from([(a, b) for a, b in list(graph.edges) if b.startswith(a + ".")])
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def test_stages_import_only_earlier_stages():
    wrong = []
    for a, b in _graph().edges:
        sa, sb = _stage(a), _stage(b)
        if sa == sb or "" in (sa, sb) or sa not in STAGES or sb not in STAGES:
            continue
        if STAGES.index(sb) > STAGES.index(sa):
            wrong.append(f"{a} imports {b}")
    assert not wrong, "a stage imports a later one: " + "; ".join(sorted(wrong))


def test_every_stage_is_a_package_listed_here():
    stages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    stages |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert stages <= set(STAGES), f"new stage(s) {sorted(stages - set(STAGES))}: add them to STAGES in order"
