"""The live view of a GDP run: progress bars and, under them, one row per gated group with a
histogram of its gate values drawn in block characters (the polarization as it happens)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: torch.Tensor, bins: int = 10) -> str:
    """A histogram of ``values`` over [0, 1] as block characters, tallest bin full height."""
    if values.numel() == 0:
        return ""
    counts = torch.histc(values.clamp(0, 1).float(), bins=bins, min=0.0, max=1.0)
    top = float(counts.max())
    return "".join(BLOCKS[0 if c == 0 else max(1, round(8 * float(c) / top))] for c in counts)


def groups_table(groups: Mapping[int, torch.Tensor], limit: int = 12) -> Table:
    table = Table(title="gates per group (histogram over 0..1)", header_style="bold", title_justify="left")
    for column in ("group", "units", "zero", "0 ........ 1"):
        table.add_column(column, justify="right" if column != "0 ........ 1" else "left")
    ordered = sorted(groups.items())
    for gid, values in ordered[:limit]:
        table.add_row(str(gid), str(values.numel()), str(int((values == 0).sum())), sparkline(values))
    if len(ordered) > limit:
        table.add_row("…", f"+{len(ordered) - limit} groups", "", "")
    return table


class GateProgress(Progress):
    """Progress bars followed by the per-group gate table."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.groups: Optional[Table] = None  # set first: the parent's constructor renders
        self._bars: dict[str, Any] = {}
        super().__init__(TextColumn("{task.description}", markup=False), BarColumn(),
                         TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                         TextColumn("{task.fields[status]}", markup=False), *args, **kwargs)

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.groups is not None:
            yield self.groups

    def update_phase(self, phase: str, step: int, total: int, info: Mapping[str, Any]) -> None:
        if phase not in self._bars:
            self._bars[phase] = self.add_task(phase, total=total, status="")
        status = f"loss {info['loss']:.3f}"
        if "lambda" in info:
            eps = f", eps {info['epsilon']:.1e}" if info.get("epsilon") is not None else ""
            status += (f", lambda {info['lambda']:.3g}{eps}, zero gates {info['zeros']}, kept {info['kept']:.3f} "
                       f"(projected {info['soft']:.3f}, target {info['target']:g})")
        if "kept_model" in info:
            status += f", kept {info['kept_model']:.3f}"
        for unit in ("tokens", "samples"):
            if f"{unit}_per_s" in info:
                status += f", {info[f'{unit}_per_s']:.0f} {unit}/s"
        if "groups" in info:
            self.groups = groups_table(info["groups"])
        self.update(self._bars[phase], completed=step, status=status)
