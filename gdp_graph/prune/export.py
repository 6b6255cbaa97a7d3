"""Saving and exporting pruned models.

* :func:`save` / :func:`load`: the whole module with ``torch.save``. An ``fx.GraphModule``
  pickles as generated code plus tensors, so loading needs torch but not gdp_graph; a pruned
  model of the user's own class needs that class's code, and gdp_graph where removed blocks left
  stand-ins (``RemovedBranch``). On torch >= 2.6 ``torch.load`` defaults to ``weights_only=True``, which refuses
  whole modules: :func:`load` passes ``weights_only=False`` (only load files you trust).
* :func:`export_source`: a folder with standalone Python source (``module.py``) and the
  weights, importable with plain torch: ``from folder import PrunedModel; PrunedModel()``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph.parametrized import folded


def save(module: nn.Module, path: str | Path) -> None:
    """Save a (pruned) module whole; weights that a ``weight_norm`` (or other parametrization)
    computes are saved as plain parameters (torch cannot pickle a parametrized module)."""
    torch.save(folded(module), Path(path))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a module saved by :func:`save` (``weights_only=False``: trusted files only)."""
    return torch.load(Path(path), map_location=map_location, weights_only=False)


def export_source(module: nn.Module, folder: str | Path, class_name: str = "PrunedModel") -> Path:
    """Write ``folder/__init__.py`` + ``module.py`` + weights so that ``import folder`` gives
    ``class_name`` without gdp_graph installed. Returns the folder. A pruned model of the user's
    own class (what ``rewrite`` returns by default) is traced with torch.fx first."""
    module = folded(module)  # weight_norm's weights as plain parameters: plain source has no hooks
    if not isinstance(module, fx.GraphModule):
        try:
            module = fx.symbolic_trace(module)
        except Exception as exc:  # noqa: BLE001 - any tracing failure: say what to do instead
            text = str(exc).strip().splitlines()
            raise TypeError(f"export_source writes an fx graph, and torch.fx cannot trace {type(module).__name__} "
                            f"({type(exc).__name__}: {text[0] if text else ''}): save() it whole, or take the "
                            f"GraphModule (rewrite(..., keep_class=False), 'gdp-graph prune --graph-module')") from None
        for node in module.graph.nodes:  # annotations such as torch.Tensor would be written unimported
            node.type = None
        module.recompile()
    if hasattr(module, "_out_spec"):  # fx's to_folder drops the pytree specs its code reads
        raise TypeError("export_source cannot write a graph captured by torch.export (its output structure "
                        "would be lost): save() it whole, or save the model of its own class that rewrite() "
                        "returns by default")
    folder = Path(folder)
    with warnings.catch_warnings():
        # containers without a constructor repr are pickled (plain torch modules): expected
        warnings.filterwarnings("ignore", message="Was not able to save the following children")
        module.to_folder(folder, class_name)
    _import_wrapped_functions(module, folder / "module.py")
    return folder


def _import_wrapped_functions(module: fx.GraphModule, source: Path) -> None:
    """fx writes a call of a function kept by ``torch.fx.wrap`` (torchvision's
    ``stochastic_depth``) as a ``wrap(...)`` line inside the class, which fails on import, and
    never imports the function: import it at the top instead."""
    text = source.read_text()
    imports = []
    for node in module.graph.nodes:
        fn = node.target
        if node.op != "call_function" or not callable(fn):
            continue
        owner, name = getattr(fn, "__module__", None) or "", getattr(fn, "__name__", "")
        alias = re.sub(r"[^0-9a-zA-Z_]", "_", f"{owner}.{name}")
        line = f'torch.fx._symbolic_trace.wrap("{alias}")'
        if line in text:
            text = "\n".join(x for x in text.split("\n") if x.strip() != line)
            imports.append(f"from {owner} import {name} as {alias}")
    if imports:
        source.write_text("\n".join(dict.fromkeys(imports)) + "\n" + text)
