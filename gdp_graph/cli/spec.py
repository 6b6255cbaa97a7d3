"""Load a model from a SPEC: ``package.module:factory`` or ``path/to/file.py:factory``.

The factory takes no arguments and returns a model, or a ``(model, example_inputs)`` pair.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from gdp_graph.errors import GdpError


class SpecError(GdpError, ValueError):
    """The SPEC cannot be resolved to a model (the message says which part is wrong)."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``."""
    try:
        shape = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise SpecError(f"--input-shape {text!r}: expected comma-separated integers like 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise SpecError(f"--input-shape {text!r}: every size must be a positive integer")
    return shape


def _import_factory(spec: str):
    if ":" not in spec:
        raise SpecError(f"SPEC {spec!r}: expected 'package.module:factory' or 'path/to/file.py:factory'")
    location, _, name = spec.rpartition(":")
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise SpecError(f"SPEC {spec!r}: file {location} not found")
        module_name = f"_gdp_spec_{abs(hash(str(path.resolve())))}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file failed to import
            raise SpecError(f"SPEC {spec!r}: importing {location} failed: {type(exc).__name__}: {exc}") from exc
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules next to the caller
        try:
            module = importlib.import_module(location)
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"SPEC {spec!r}: cannot import module {location!r}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if factory is None:
        raise SpecError(f"SPEC {spec!r}: {location} has no attribute {name!r}")
    if not callable(factory):
        raise SpecError(f"SPEC {spec!r}: {name!r} is not callable")
    return factory


def load_spec(spec: str, input_shape: Optional[str] = None) -> tuple[nn.Module, tuple[Any, ...]]:
    """Build the model and its example inputs (``input_shape`` overrides the factory's)."""
    factory = _import_factory(spec)
    try:
        made = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory raised
        raise SpecError(f"SPEC {spec!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    inputs: Optional[tuple] = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        model, given = made
        inputs = (given,) if isinstance(given, torch.Tensor) else tuple(given)
    else:
        model = made
    if not isinstance(model, nn.Module):
        raise SpecError(f"SPEC {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    if input_shape is not None:
        generator = torch.Generator().manual_seed(0)
        inputs = (torch.randn(parse_shape(input_shape), generator=generator),)
    if inputs is None:
        raise SpecError(f"SPEC {spec!r}: the factory returned no example inputs; pass --input-shape")
    return model, inputs
