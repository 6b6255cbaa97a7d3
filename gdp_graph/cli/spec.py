"""Load a model from a SPEC: ``package.module:factory`` or ``path/to/file.py:factory``.

The factory takes no arguments and returns a model, or a ``(model, example_inputs)`` pair; the
example inputs are a tensor, a tuple of positional inputs or a dict of keyword inputs.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from gdp_graph.recipes.factory import FactoryError, import_factory


class SpecError(FactoryError):
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


def load_spec(spec: str, input_shape: Optional[str] = None, *,
              require_inputs: bool = True) -> tuple[nn.Module, Optional[tuple[Any, ...]]]:
    """Build the model and its example inputs (``input_shape`` overrides the factory's; with
    ``require_inputs=False`` they may be None, for callers that take them from data)."""
    factory = import_factory(spec)
    try:
        made = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory raised
        raise SpecError(f"SPEC {spec!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    inputs: Optional[tuple] = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        model, given = made
        # a dict is keyword inputs (model(**inputs)), kept as is for analyze
        inputs = (given,) if isinstance(given, torch.Tensor) else given if isinstance(given, dict) else tuple(given)
    else:
        model = made
    if not isinstance(model, nn.Module):
        raise SpecError(f"SPEC {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    if input_shape is not None:
        generator = torch.Generator().manual_seed(0)
        inputs = (torch.randn(parse_shape(input_shape), generator=generator),)
    if inputs is None and require_inputs:
        raise SpecError(f"SPEC {spec!r}: the factory returned no example inputs; pass --input-shape")
    return model, inputs
