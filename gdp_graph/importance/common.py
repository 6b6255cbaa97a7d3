"""What every importance method shares: the error, the result type, and how a batch reaches
the model (see :mod:`gdp_graph.importance.scores` for the methods)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import Tensor

from gdp_graph.errors import GdpError
from gdp_graph.graph.analysis import Analysis

__all__ = ["METHODS", "ImportanceError", "InputsFn", "LossFn", "Scores", "call_args", "device_of", "limited",
           "to_device"]

#: the importance methods :func:`score_units` knows
METHODS = ("magnitude", "activation", "taylor", "depth")
#: ``loss_fn(output, batch) -> scalar tensor`` (the TASK contract's ``loss``)
LossFn = Callable[[Any, Any], Tensor]
#: ``inputs(batch) -> positional tuple or keyword dict`` for the model
InputsFn = Callable[[Any], Any]


class ImportanceError(GdpError, ValueError):
    """Importance cannot be computed as asked (the message names the method, group or layer)."""


@dataclass(frozen=True)
class Scores:
    """Importance per unit and per block (higher = more important).

    ``units[gid]`` holds one float64 score per unit of group ``gid`` (frozen units included, so
    shapes match the group; selection ignores them); ``blocks[bid]`` one float per removable
    block the method measures (empty for ``magnitude``). ``batches`` is how many batches were
    used (0 for ``magnitude``).
    """

    method: str
    units: Mapping[int, Tensor] = field(default_factory=dict)
    blocks: Mapping[int, float] = field(default_factory=dict)
    batches: int = 0

    def ranked_blocks(self) -> list[int]:
        """Block ids, least important first (ties by id)."""
        return sorted(self.blocks, key=lambda b: (self.blocks[b], b))


def call_args(batch: Any, inputs: Optional[InputsFn]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A batch as the model's ``(args, kwargs)``."""
    value = inputs(batch) if inputs is not None else _default_inputs(batch)
    if isinstance(value, Mapping):
        return (), dict(value)
    if isinstance(value, (tuple, list)):
        return tuple(value), {}
    return (value,), {}


def _default_inputs(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)):
        return (batch[0],)
    return batch


def to_device(value: Any, device: torch.device) -> Any:
    """Every tensor in ``value`` (nested containers) moved to ``device``."""
    from torch.utils._pytree import tree_map
    return tree_map(lambda v: v.to(device) if isinstance(v, Tensor) else v, value)


def device_of(analysis: Analysis) -> torch.device:
    for t in analysis.traced.gm.parameters():
        return t.device
    return torch.device("cpu")


def limited(batches: Iterable[Any], max_batches: Optional[int]) -> Iterable[Any]:
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            return
        yield batch
