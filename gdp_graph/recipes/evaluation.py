"""Evaluation on a TASK's eval loader: :func:`eval_batches` is the one evaluation loop (every
recipe's evaluation goes through it), :func:`evaluate` the task's metric over it."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
from torch import nn

from gdp_graph.recipes.task import Task, TaskError, batch_length, model_inputs, move_to

__all__ = ["eval_batches", "evaluate"]


def eval_batches(model: nn.Module, task: Task, device: torch.device, visit: Callable[[Any, Any], None], *,
                 autocast: Optional[torch.dtype] = None, max_batches: Optional[int] = None) -> None:
    """``visit(batch, output)`` for every batch of ``task.eval_loader`` (the first ``max_batches``
    when given): the batch moved to ``device``, ``output`` the model's output on it, in eval mode
    without gradients. The forward pass and ``visit`` run under ``torch.autocast`` to the
    ``autocast`` dtype when given. Every submodule's ``training`` flag is restored afterwards
    (also on error), so a model with, say, a frozen BN layer in eval mode is left as it was."""
    modes = [(m, m.training) for m in model.modules()]
    cast = None if autocast is None else (torch.device(device).type, autocast)
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(task.eval_loader or ()):
                if max_batches is not None and i >= max_batches:
                    break
                batch = move_to(batch, device)
                args, kwargs = model_inputs(task, batch)
                with torch.autocast(*cast) if cast is not None else contextlib.nullcontext():
                    visit(batch, model(*args, **kwargs))
    finally:
        for m, mode in modes:
            m.training = mode


def evaluate(model: nn.Module, task: Task, device: torch.device) -> Optional[float]:
    """The task's metric averaged over ``eval_loader`` weighted by batch size (the mean loss
    without a metric); None without an evaluation loader; an empty one is a :class:`TaskError`."""
    if task.eval_loader is None:
        return None
    sums = {"total": 0.0, "count": 0}

    def visit(batch: Any, output: Any) -> None:
        value = task.metric(output, batch) if task.metric is not None else task.loss(output, batch)
        n = max(batch_length(batch), 1)
        sums["total"] += float(value) * n
        sums["count"] += n

    eval_batches(model, task, device, visit)
    if not sums["count"]:  # evaluated first on the original model, so this stops a run before training
        raise TaskError(f"TASK {task.name}: eval_loader is empty")
    return sums["total"] / sums["count"]
