"""The TASK contract of ``gdp-graph prune``: what training needs besides the model.

A task is a factory named like a SPEC (``path/to/file.py:factory`` or ``package.module:factory``)
that takes no arguments and returns a :class:`Task` (or a dict with the same keys)::

    from gdp_graph.recipes.task import Task

    def task():
        train = DataLoader(my_train_set, batch_size=64, shuffle=True)
        test = DataLoader(my_test_set, batch_size=256)
        return Task(
            train_loader=train,
            loss=lambda output, batch: F.cross_entropy(output, batch[1]),
            eval_loader=test,                                      # optional
            metric=lambda output, batch: (output.argmax(1) == batch[1]).float().mean().item(),
            epochs=10, lr=0.01)                                    # optional defaults for the flags

* ``loss(output, batch)`` returns the task loss tensor for one batch; ``output`` is the model's
  output on ``inputs(batch)``.
* ``inputs(batch)`` (optional) gives the model's positional inputs (a tuple or one value) or
  its keyword inputs (a dict, e.g. ``{"input_ids": batch, "use_cache": False}``). By default a tuple or list
  batch feeds its first element (``(images, labels)`` -> ``model(images)``), a dict batch is
  passed as keyword arguments, and a tensor batch is the input itself.
* ``metric(output, batch)`` (optional, higher is better) is averaged over ``eval_loader``,
  weighted by batch size; without it the evaluation reports the mean loss.
* ``epochs``, ``finetune_epochs``, ``lr``, ``finetune_lr`` (optional) are defaults that the
  command-line flags override.
* ``tokenizer`` (optional): saved with a Hugging Face model's ``--out DIR/hf`` folder.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Mapping, Optional

import torch

from gdp_graph.errors import GdpError
from gdp_graph.recipes.factory import FactoryError, import_factory

__all__ = ["Task", "TaskError", "load_task", "move_to", "model_inputs", "batch_length"]


class TaskError(GdpError, ValueError):
    """The TASK factory cannot be loaded or does not honour the contract (the message says how)."""


@dataclass
class Task:
    train_loader: Iterable[Any]
    loss: Callable[[Any, Any], torch.Tensor]
    eval_loader: Optional[Iterable[Any]] = None
    metric: Optional[Callable[[Any, Any], float]] = None
    inputs: Optional[Callable[[Any], tuple]] = None
    epochs: Optional[int] = None
    finetune_epochs: Optional[int] = None
    lr: Optional[float] = None
    finetune_lr: Optional[float] = None
    name: str = "task"
    tokenizer: Optional[Any] = None


def _as_task(made: Any, where: str) -> Task:
    if isinstance(made, Task):
        task = made
    elif isinstance(made, Mapping):
        known = {f.name for f in fields(Task)}
        unknown = sorted(set(made) - known)
        if unknown:
            raise TaskError(f"TASK {where}: unknown keys {unknown} (known: {sorted(known)})")
        missing = [k for k in ("train_loader", "loss") if k not in made]
        if missing:
            raise TaskError(f"TASK {where}: missing {missing}")
        task = Task(**made)
    else:
        raise TaskError(f"TASK {where}: the factory returned {type(made).__name__}; return a "
                        "gdp_graph.recipes.task.Task or a dict with train_loader and loss")
    if not callable(task.loss):
        raise TaskError(f"TASK {where}: 'loss' is not callable")
    for key in ("metric", "inputs"):
        if getattr(task, key) is not None and not callable(getattr(task, key)):
            raise TaskError(f"TASK {where}: '{key}' is not callable")
    try:
        iter(task.train_loader)
    except TypeError:
        raise TaskError(f"TASK {where}: 'train_loader' is not iterable") from None
    if task.name == "task":
        task.name = where
    return task


def load_task(spec: str) -> Task:
    """Import the factory named by ``spec`` (like a model SPEC) and check what it returns."""
    try:
        factory = import_factory(spec, what="TASK")
    except FactoryError as exc:
        raise TaskError(str(exc)) from None
    try:
        made = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory raised
        raise TaskError(f"TASK {spec!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    return _as_task(made, spec)


def move_to(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor (in tuples, lists and dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def model_inputs(task: Task, batch: Any) -> tuple[tuple, dict]:
    """(args, kwargs) the model is called with on ``batch`` (see the module docstring)."""
    if task.inputs is not None:
        made = task.inputs(batch)
        if isinstance(made, Mapping):  # keyword inputs, as Hugging Face models take them
            return (), dict(made)
        return (made if isinstance(made, tuple) else (made,)), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return (batch[0],), {}
    return (batch,), {}


def batch_length(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for v in values:
        n = batch_length(v)
        if n:
            return n
    return 0
