"""Epochs and evaluation of classification models, for ``gdp-graph train`` and the examples.

:func:`train_one_epoch` is one pass over a loader through the library's training loop
(:func:`gdp_graph.recipes.recovery.train_steps`); the pruning machinery plugs into two hooks:

* ``extra_loss()`` returns a scalar added to the task loss at every step (the pruning
  penalty);
* ``on_step(global_step)`` runs after every optimizer step (the pruning schedules).

Loss and accuracy are accumulated on the device and read back once per epoch (or every few
steps while a progress bar is shown), so the loop does not force a device sync per step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdp_graph.recipes.recovery import make_optimizer as _make_optimizer
from gdp_graph.vocabulary import half_cosine

if TYPE_CHECKING:
    from rich.progress import Progress

    from gdp_graph.recipes.recovery import StepResult

__all__ = [
    "cosine_lr_factor",
    "cosine_schedule",
    "evaluate",
    "make_optimizer",
    "train_one_epoch",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
#: ``None``/``False``: no bar; ``True``: own bar on stderr when it is a terminal; a
#: :class:`rich.progress.Progress`: add a task to it (skipped when its console is no terminal).
ProgressArg = Union[bool, "Progress", None]

_REFRESH_EVERY = 25  # steps between progress-bar loss readouts (each one syncs the device)


# --------------------------------------------------------------------------------------------
# helpers


class _Bar:
    """A progress-bar task, or a no-op when progress is disabled."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self.progress = progress
        self.task = task

    @property
    def enabled(self) -> bool:
        return self.progress is not None

    def update(self, advance: int = 1, **fields: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=advance, **fields)


@contextlib.contextmanager
def _progress_bar(progress: ProgressArg, total: int | None, description: str) -> Iterator[_Bar]:
    if progress is None or progress is False:
        yield _Bar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if progress is True:
        console = Console(file=sys.stderr)
        if not console.is_terminal:
            yield _Bar()
            return
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=True,
        )
        with bar:
            task = bar.add_task(description, total=total, status="")
            yield _Bar(bar, task)
        return
    if not isinstance(progress, Progress):
        raise TypeError(
            "progress must be None, a bool or a rich.progress.Progress, "
            f"got {type(progress).__name__}"
        )
    if not progress.console.is_terminal:
        yield _Bar()
        return
    task = progress.add_task(description, total=total, status="")
    try:
        yield _Bar(progress, task)
    finally:
        progress.remove_task(task)


def _num_batches(loader: Iterable[Any], max_steps: int | None) -> int | None:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n = None
    if max_steps is not None:
        n = max_steps if n is None else min(n, max_steps)
    return n


# --------------------------------------------------------------------------------------------
# train / evaluate


def train_one_epoch(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], optimizer: torch.optim.Optimizer, *,
    device: torch.device | str, loss_fn: LossFn = F.cross_entropy, extra_loss: Callable[[], Tensor] | None = None,
    on_step: Callable[[int], None] | None = None, autocast: bool = False,
    autocast_dtype: torch.dtype = torch.bfloat16, scheduler: Any = None, progress: ProgressArg = None,
    start_step: int = 0, max_steps: int | None = None, description: str = "train",
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader`` (or ``max_steps`` batches).

    Each step (:func:`gdp_graph.recipes.recovery.train_steps`): ``loss = loss_fn(model(x), y) +
    extra_loss()``, backward, ``optimizer.step()``, ``scheduler.step()`` (when given; the
    schedule is per step, not per epoch), then ``on_step(global_step)``.

    Args:
        model: put in training mode for the epoch.
        loader: yields ``(inputs, integer targets)``; batches are moved to ``device``.
        optimizer: any torch optimizer over the model's (and e.g. gates') parameters.
        device: where the model lives.
        loss_fn: task loss on ``(logits, targets)`` returning the batch mean.
        extra_loss: called once per step, after the forward pass; its scalar result is added
            to the task loss (e.g. a sparsity penalty). Computed outside autocast.
        on_step: called after every optimizer step with the global step count, i.e.
            ``start_step + steps done in this epoch`` (``start_step + 1`` after the first).
        autocast: run forward and task loss under :func:`torch.autocast` for the device type
            with ``autocast_dtype`` (bfloat16 by default, which needs no gradient scaler).
        scheduler: object with ``.step()`` called after each optimizer step (e.g. from
            :func:`cosine_schedule`).
        progress: see ``ProgressArg``: ``None``/``False`` disables the bar, ``True`` shows one
            on stderr if it is a terminal, a ``rich.progress.Progress`` gets a task added.
        start_step: global step count before this epoch.
        max_steps: stop after this many steps (for smoke runs).
        description: label of the progress bar.

    Returns:
        ``loss`` (mean total loss per sample), ``task_loss``, ``extra_loss`` (means, so that
        ``loss == task_loss + extra_loss``), ``accuracy`` (fraction in ``[0, 1]``), ``n``
        (samples), ``steps``, ``global_step`` (``start_step + steps``, to pass on as the next
        epoch's ``start_step``), ``lr`` (first param group, at the end) and ``seconds``.
    """
    from gdp_graph.recipes.recovery import train_steps
    from gdp_graph.recipes.task import Task

    dev = torch.device(device)
    sums = _EpochSums(dev, start_step, on_step)
    limit = max_steps if max_steps is not None else sys.maxsize
    t0 = time.perf_counter()
    with _progress_bar(progress, _num_batches(loader, max_steps), description) as bar:
        sums.bar = bar
        task = Task(train_loader=loader, loss=lambda logits, batch: loss_fn(logits, batch[1]).float(), name="cifar10")
        train_steps(model, task, dev, limit, optimizer, extra_loss=extra_loss, batches=loader, scheduler=scheduler,
                    autocast=autocast_dtype if autocast else None, on_step=sums.add)
    lr = float(optimizer.param_groups[0]["lr"]) if optimizer.param_groups else math.nan
    return sums.stats(lr, time.perf_counter() - t0)


class _EpochSums:
    """Loss, penalty and accuracy of an epoch summed on the device (read once at its end, or
    every ``_REFRESH_EVERY`` steps for the progress bar), and the caller's ``on_step``."""

    def __init__(self, device: torch.device, start_step: int, on_step: Callable[[int], None] | None) -> None:
        self.task = torch.zeros((), dtype=torch.float64, device=device)
        self.extra = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.n, self.steps, self.start_step, self.on_step, self.bar = 0, 0, start_step, on_step, _Bar()

    def add(self, step: StepResult) -> None:
        self.steps = step.step
        if self.on_step is not None:
            self.on_step(self.start_step + step.step)
        y = step.batch[1]
        bs = int(y.shape[0])
        self.n += bs
        self.task += step.loss.double() * bs
        if step.extra is not None:
            self.extra += step.extra.to(self.task.device, torch.float64) * bs
        self.correct += (step.output.detach().argmax(dim=1) == y).sum()
        if self.bar.enabled:
            if step.step % _REFRESH_EVERY == 0:
                mean = (self.task + self.extra).item() / self.n
                self.bar.update(1, status=f"loss {mean:.4f}  acc {self.correct.item() / self.n:.3f}")
            else:
                self.bar.update(1)

    def stats(self, lr: float, seconds: float) -> dict[str, float]:
        denom = max(self.n, 1)
        task_mean, extra_mean = self.task.item() / denom, self.extra.item() / denom
        return {"loss": task_mean + extra_mean, "task_loss": task_mean, "extra_loss": extra_mean,
                "accuracy": self.correct.item() / denom, "n": self.n, "steps": self.steps,
                "global_step": self.start_step + self.steps, "lr": lr, "seconds": seconds}


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device | str,
    loss_fn: LossFn = F.cross_entropy,
    autocast: bool = False,
    autocast_dtype: torch.dtype = torch.bfloat16,
    progress: ProgressArg = None,
    max_batches: int | None = None,
    description: str = "eval",
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` over ``loader``, through the library's evaluation loop
    (:func:`gdp_graph.recipes.evaluation.eval_batches`: eval mode, no gradients, every
    submodule's ``training`` flag restored afterwards, also on error).

    Returns:
        ``loss`` (mean per sample, ``loss_fn`` must return the batch mean), ``accuracy``
        (fraction), ``n`` (samples seen) and ``seconds``.
    """
    from gdp_graph.recipes.evaluation import eval_batches
    from gdp_graph.recipes.task import Task

    dev = torch.device(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    n = 0
    t0 = time.perf_counter()
    with _progress_bar(progress, _num_batches(loader, max_batches), description) as bar:

        def visit(batch: tuple[Tensor, Tensor], logits: Tensor) -> None:
            nonlocal loss_sum, correct, n
            y = batch[1]
            bs = int(y.shape[0])
            n += bs
            loss_sum += loss_fn(logits, y).double() * bs
            correct += (logits.argmax(dim=1) == y).sum()
            bar.update(1)

        task = Task(train_loader=(), eval_loader=loader, loss=lambda logits, batch: loss_fn(logits, batch[1]),
                    name="cifar10")
        eval_batches(model, task, dev, visit, autocast=autocast_dtype if autocast else None, max_batches=max_batches)
    denom = max(n, 1)
    return {"loss": loss_sum.item() / denom, "accuracy": correct.item() / denom, "n": n,
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# optimizer and schedule


#: SGD with momentum 0.9, weight decay 5e-4 and Nesterov over a model's trainable parameters (the
#: library's :func:`~gdp_graph.recipes.recovery.make_optimizer` with the CIFAR preset)
make_optimizer = functools.partial(_make_optimizer, weight_decay=5e-4, nesterov=True)


def cosine_lr_factor(
    step: int, total_steps: int, *, warmup_steps: int = 0, min_factor: float = 0.0
) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine decay to ``min_factor``.

    Warm-up rises as ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps; the
    cosine then goes from 1 at ``step == warmup_steps`` to ``min_factor`` at
    ``step == total_steps`` and stays there.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    return min_factor + (1.0 - min_factor) * half_cosine((step - warmup_steps) / span)


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step cosine schedule (see :func:`cosine_lr_factor`); call ``.step()`` after every
    optimizer step (``train_one_epoch(scheduler=...)`` does)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps], got {warmup_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: cosine_lr_factor(
            s, total_steps, warmup_steps=warmup_steps, min_factor=min_factor
        ),
    )
