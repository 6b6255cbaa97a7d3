"""The live view's per-group gate histograms."""

import torch
from rich.console import Console

from gdp_graph.report.live import GateProgress, groups_table, sparkline


def test_sparkline_shows_polarization():
    polarized = torch.tensor([0.0] * 5 + [0.995] * 10)
    line = sparkline(polarized, bins=10)
    assert len(line) == 10
    assert line[0] != " " and line[-1] == "█" and set(line[1:-1]) == {" "}
    assert sparkline(torch.full((4,), 0.5), bins=10)[5] == "█"
    assert sparkline(torch.zeros(0)) == ""


def test_groups_table_counts_zero_gates():
    console = Console(width=120, record=True)
    console.print(groups_table({3: torch.tensor([0.0, 0.0, 1.0]), 1: torch.tensor([1.0, 0.7])}))
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert rows[0].split("│")[1].strip() == "1" and rows[1].split("│")[3].strip() == "2"


def test_progress_renders_bars_and_the_table():
    console = Console(width=160, record=True, force_terminal=False)
    with GateProgress(console=console) as progress:
        progress.update_phase("gated", 3, 10, {"loss": 0.5, "lambda": 1.0, "epsilon": 1e-3, "zeros": 2, "kept": 0.8,
                                               "soft": 0.75, "target": 0.5, "groups": {0: torch.tensor([0.0, 1.0])}})
    text = console.export_text()
    assert "lambda 1" in text and "projected 0.750" in text and "gates per group" in text
