"""Training loops of ``gdp-graph prune`` by a step budget, and logit distillation from the frozen
original model.

A language-model epoch is far too long on a CPU, so ``--steps N`` counts optimizer steps: the
loader is cycled until ``N`` steps are done. :func:`distill_loss` mixes the task loss with
``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al. 2015; Minitron's
recovery), the teacher running under ``torch.no_grad()`` in eval mode.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from gdp_graph.recipes.task import Task, TaskError, batch_length, model_inputs, move_to

__all__ = ["Distillation", "Throughput", "output_logits", "distill_loss", "cycle", "frozen_teacher", "train_steps"]

#: ``after_step(step, loss, info)``: info holds the throughput (``tokens_per_s`` or ``samples_per_s``)
AfterStep = Callable[[int, float, dict], None]


@dataclass(frozen=True)
class Distillation:
    """The frozen teacher and how its logits enter the loss (see the module docstring)."""

    teacher: nn.Module
    temperature: float = 2.0
    alpha: float = 0.5


def output_logits(output: Any) -> torch.Tensor:
    """The logits of a model output: the tensor itself, a ``.logits`` attribute (Hugging Face
    outputs), or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TaskError(f"distillation needs logits: the model returned {type(output).__name__} (a tensor, an object "
                    "with .logits, or a tuple whose first element is the logits)")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher_T || student_T)`` over the last dim, averaged over every other position."""
    t = float(temperature)
    s = F.log_softmax(student.float().reshape(-1, student.shape[-1]) / t, dim=-1)
    q = F.log_softmax(teacher.float().reshape(-1, teacher.shape[-1]) / t, dim=-1)
    return F.kl_div(s, q, log_target=True, reduction="batchmean") * (t * t)


def frozen_teacher(model: nn.Module, device: torch.device) -> nn.Module:
    """A frozen copy of ``model`` in eval mode on ``device`` (the original is left alone)."""
    teacher = copy.deepcopy(model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def cycle(loader: Any, steps: int) -> Iterator[Any]:
    """``steps`` batches from ``loader``, starting it again as often as needed."""
    done = 0
    while done < steps:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            done += 1
            if done >= steps:
                return
        if empty:
            raise TaskError("train_loader is empty")


class Throughput:
    """Tokens (integer inputs, e.g. token ids) or samples per second over the steps so far."""

    def __init__(self) -> None:
        self.started, self.count, self.unit = time.perf_counter(), 0, "samples"

    def add(self, args: tuple, kwargs: dict) -> None:
        ids = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)
                    and not v.is_floating_point() and v.dim() >= 2), None)
        if ids is not None:
            self.unit, self.count = "tokens", self.count + ids.numel()
        else:
            self.count += max(batch_length(args or kwargs), 1)

    def info(self) -> dict[str, float]:
        return {f"{self.unit}_per_s": self.count / max(time.perf_counter() - self.started, 1e-9)}


def _loss(model: nn.Module, task: Task, batch: Any, distill: Optional[Distillation], meter: Throughput) -> torch.Tensor:
    args, kwargs = model_inputs(task, batch)
    meter.add(args, kwargs)
    output = model(*args, **kwargs)
    loss = task.loss(output, batch)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise TaskError(f"TASK {task.name}: loss(output, batch) must return a scalar tensor, "
                        f"got {type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    if distill is None:
        return loss
    with torch.no_grad():
        target = output_logits(distill.teacher(*args, **kwargs))
    kd = distill_loss(output_logits(output), target, distill.temperature)
    return distill.alpha * kd + (1.0 - distill.alpha) * loss


def train_steps(model: nn.Module, task: Task, device: torch.device, steps: int, optimizer: torch.optim.Optimizer, *,
                extra_loss: Optional[Callable[[], torch.Tensor]] = None, after_step: Optional[AfterStep] = None,
                extra_optimizers: tuple = (), distill: Optional[Distillation] = None,
                stop: Optional[Callable[[], bool]] = None, batches: Optional[Any] = None) -> float:
    """``steps`` optimizer steps with a cosine learning rate over them (fewer when ``stop()``
    turns true after a step); returns the mean training loss (the distillation mix with
    ``distill``, without ``extra_loss``). ``batches``: the batches to use (default: the train
    loader, cycled)."""
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    model.train()
    meter, total, done = Throughput(), 0.0, 0
    for batch in (batches if batches is not None else cycle(task.train_loader, steps)):
        batch = move_to(batch, device)
        loss = _loss(model, task, batch, distill, meter)
        total_loss = loss + extra_loss() if extra_loss is not None else loss
        for opt in (optimizer, *extra_optimizers):
            opt.zero_grad(set_to_none=True)
        total_loss.backward()
        for opt in (optimizer, *extra_optimizers):
            opt.step()
        lr_schedule.step()
        done += 1
        total += float(loss.detach())
        if after_step is not None:
            after_step(done, float(loss.detach()), meter.info())
        if done >= steps or (stop is not None and stop()):
            break
    return total / done if done else math.nan
