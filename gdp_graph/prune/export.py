"""Saving and exporting pruned models.

* :func:`save` / :func:`load`: the whole module with ``torch.save``. A pruned model is an
  ``fx.GraphModule``, which pickles as generated code plus tensors, so loading needs torch but
  not gdp_graph. On torch >= 2.6 ``torch.load`` defaults to ``weights_only=True``, which refuses
  whole modules: :func:`load` passes ``weights_only=False`` (only load files you trust).
* :func:`export_source`: a folder with standalone Python source (``module.py``) and the
  weights, importable with plain torch: ``from folder import PrunedModel; PrunedModel()``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn


def save(module: nn.Module, path: str | Path) -> None:
    """Save a (pruned) module whole."""
    torch.save(module, Path(path))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a module saved by :func:`save` (``weights_only=False``: trusted files only)."""
    return torch.load(Path(path), map_location=map_location, weights_only=False)


def export_source(module: fx.GraphModule, folder: str | Path, class_name: str = "PrunedModel") -> Path:
    """Write ``folder/__init__.py`` + ``module.py`` + weights so that ``import folder`` gives
    ``class_name`` without gdp_graph installed. Returns the folder."""
    if not isinstance(module, fx.GraphModule):
        raise TypeError(f"export_source needs the fx.GraphModule that rewrite() returns, got {type(module).__name__}")
    folder = Path(folder)
    with warnings.catch_warnings():
        # containers without a constructor repr are pickled (plain torch modules): expected
        warnings.filterwarnings("ignore", message="Was not able to save the following children")
        module.to_folder(folder, class_name)
    return folder
