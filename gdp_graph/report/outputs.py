"""What ``prune`` and ``apply`` leave in their output folder, and reading it back.

``DIR/pruned.pt`` (the whole pruned module: ``gdp_graph.prune.export.load`` or
``torch.load(path, weights_only=False)``), ``DIR/plan.json`` (re-apply with ``gdp-graph
apply``), ``DIR/report.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from gdp_graph.errors import GdpError
from gdp_graph.graph.analysis import Analysis
from gdp_graph.prune.export import load, save
from gdp_graph.prune.plan import PruningPlan

PRUNED_FILE, PLAN_FILE, REPORT_FILE, INPUTS_FILE = "pruned.pt", "plan.json", "report.json", "example_inputs.pt"


class OutputError(GdpError, ValueError):
    """A pruned-model file or folder that cannot be read (the message names the path)."""


def write_outputs(folder: str | Path, pruned: nn.Module, plan: PruningPlan, report: dict[str, Any],
                  inputs: Optional[Sequence[Any]] = None, *, analysis: Optional[Analysis] = None) -> Path:
    """Write the pruned model, the plan (with what it was made for, given ``analysis``), the
    report and the example inputs. Everything is written to a temporary folder beside
    ``folder`` first and each file is then renamed into place, so a failure (a model that
    cannot be pickled, a full disk) leaves ``folder`` as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save(pruned, staging / PRUNED_FILE)
        plan.save(staging / PLAN_FILE, analysis)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=1, default=str))
        if inputs is not None and all(isinstance(v, torch.Tensor) for v in inputs):
            torch.save(tuple(v.detach().cpu() for v in inputs), staging / INPUTS_FILE)
        folder.mkdir(exist_ok=True)
        for file in staging.iterdir():
            os.replace(file, folder / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_inputs(path: str | Path) -> Optional[tuple[torch.Tensor, ...]]:
    """The example inputs saved next to a pruned model, or None."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / INPUTS_FILE).is_file():
        return None
    return tuple(torch.load(folder / INPUTS_FILE, weights_only=True))


def pruned_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/pruned.pt`` for an output folder."""
    path = Path(path)
    if path.is_dir():
        path = path / PRUNED_FILE
    if not path.is_file():
        raise OutputError(f"{path}: no such pruned model (give the .pt file or the folder 'prune'/'apply' wrote)")
    return path


def load_pruned(path: str | Path) -> nn.Module:
    """The module saved by :func:`write_outputs` (a trusted file: it is unpickled)."""
    path = pruned_path(path)
    try:
        module = load(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise OutputError(f"{path}: cannot load a pruned model: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise OutputError(f"{path}: holds a {type(module).__name__}, not a whole nn.Module")
    return module.eval()


def load_plan(path: str | Path) -> PruningPlan:
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_FILE
    try:
        return PruningPlan.load(path)
    except FileNotFoundError:
        raise OutputError(f"{path}: no such plan file") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"{path}: not a pruning plan ({type(exc).__name__}: {exc})") from None
