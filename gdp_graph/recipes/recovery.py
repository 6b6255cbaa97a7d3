"""The training loop of the library (:func:`train_steps`: ``gdp-graph prune``, ``gdp-graph
train`` and the recovery of a pruned model all step through it), and logit distillation from the
frozen original model.

A language-model epoch is far too long on a CPU, so ``--steps N`` counts optimizer steps: the
loader is cycled until ``N`` steps are done. :func:`distill_loss` mixes the task loss with
``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al. 2015; Minitron's
recovery), the teacher running under ``torch.no_grad()`` in eval mode.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from gdp_graph.graph.model_copy import deepcopy_model
from gdp_graph.recipes.task import Task, TaskError, batch_length, model_inputs, move_to

__all__ = ["COSINE", "Distillation", "StepResult", "Throughput", "output_logits", "distill_loss", "cycle",
           "frozen_teacher", "make_optimizer", "train_steps"]

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
    teacher = deepcopy_model(model).to(device).eval()
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


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step of :func:`train_steps` left, for an ``on_step`` hook: tensors
    still on the device (reading them is the hook's choice, the loop forces no sync)."""

    step: int  #: optimizer steps done, 1 after the first
    batch: Any  #: the batch, on the device
    output: Any  #: the model's output on it
    loss: torch.Tensor  #: the task loss (the distillation mix with ``distill``), detached
    extra: Optional[torch.Tensor]  #: ``extra_loss()``, detached (None without it)


#: ``scheduler`` default of :func:`train_steps`: a cosine learning rate over its ``steps``
COSINE = "cosine"


def _loss(model: nn.Module, task: Task, batch: Any, distill: Optional[Distillation], meter: Throughput,
          autocast: Optional[tuple[str, torch.dtype]]) -> tuple[Any, torch.Tensor]:
    """(output, loss): the forward pass and the task loss, under ``torch.autocast(*autocast)``
    when given."""
    args, kwargs = model_inputs(task, batch)
    meter.add(args, kwargs)
    with torch.autocast(*autocast) if autocast is not None else contextlib.nullcontext():
        output = model(*args, **kwargs)
        loss = task.loss(output, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TaskError(f"TASK {task.name}: loss(output, batch) must return a scalar tensor, "
                            f"got {type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        if distill is None:
            return output, loss
        with torch.no_grad():
            target = output_logits(distill.teacher(*args, **kwargs))
        kd = distill_loss(output_logits(output), target, distill.temperature)
        return output, distill.alpha * kd + (1.0 - distill.alpha) * loss


def _optimizer_step(loss: torch.Tensor, optimizers: tuple, scheduler: Any) -> None:
    """Gradients of ``loss``, one step of every optimizer (in order), then the learning rate."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    if scheduler is not None:
        scheduler.step()


def make_optimizer(params: Union[nn.Module, Iterable[nn.Parameter]], lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0, nesterov: bool = False, *, kind: str = "sgd",
                   no_weight_decay: Optional[Callable[[str, nn.Parameter], bool]] = None) -> torch.optim.Optimizer:
    """The weights' optimizer of every recipe: SGD (``kind`` "sgd"; Nesterov only with momentum,
    which torch requires) or AdamW (``kind`` "adam"; ``momentum`` and ``nesterov`` unused).

    ``params``: a module (its parameters that require gradients) or the parameters themselves,
    taken as given. ``no_weight_decay(name, param)`` (a module only) picks parameters that get
    no weight decay (e.g. BN affine parameters); they form a second parameter group."""
    if isinstance(params, nn.Module):
        named = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    elif no_weight_decay is not None:
        raise TypeError("no_weight_decay selects by name: pass the module, not its parameters")
    else:
        named = [("", p) for p in params]
    plain = [p for n, p in named if no_weight_decay is not None and no_weight_decay(n, p)]
    chosen = {id(p) for p in plain}
    decay = [p for _, p in named if id(p) not in chosen]
    if not named:
        raise ValueError("no trainable parameters to optimize")
    groups = ([{"params": decay, "weight_decay": weight_decay}] if decay else []) + (
        [{"params": plain, "weight_decay": 0.0}] if plain else [])
    if kind == "adam":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=bool(nesterov and momentum > 0))


def train_steps(model: nn.Module, task: Task, device: torch.device, steps: int, optimizer: torch.optim.Optimizer, *,
                extra_loss: Optional[Callable[[], torch.Tensor]] = None, after_step: Optional[AfterStep] = None,
                extra_optimizers: tuple = (), distill: Optional[Distillation] = None,
                stop: Optional[Callable[[], bool]] = None, batches: Optional[Any] = None, scheduler: Any = COSINE,
                autocast: Optional[torch.dtype] = None,
                on_step: Optional[Callable[[StepResult], None]] = None) -> float:
    """The training loop of the library: every recipe (``gdp-graph prune``, ``gdp-graph train``,
    recovery, distillation) runs its optimizer steps here.

    Each step: the batch to ``device``, forward and ``task.loss`` (under ``torch.autocast`` to the
    ``autocast`` dtype when given; mixed with logit distillation from ``distill``), plus
    ``extra_loss()`` (outside autocast: the pruning penalty), backward, ``optimizer`` then each of
    ``extra_optimizers`` stepped, ``scheduler.step()``, then the hooks: ``on_step(StepResult)``
    (no device sync) and ``after_step(step, loss, throughput)`` (reads the loss).

    Stops after ``steps`` steps, when ``batches`` run out, or when ``stop()`` turns true after a
    step. ``batches``: the batches (augmentation, epochs: the iterator's business; default: the
    train loader, cycled). ``scheduler``: any object with ``.step()``, None for none, default a
    cosine learning rate over ``steps``. Returns the mean training loss (the distillation mix with
    ``distill``, without ``extra_loss``), read from the device once."""
    if isinstance(scheduler, str):
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    cast = None if autocast is None else (torch.device(device).type, autocast)
    model.train()
    meter, total, done = Throughput(), torch.zeros((), dtype=torch.float64, device=device), 0
    batch_iter = iter(batches if batches is not None else cycle(task.train_loader, steps))
    while done < steps:
        batch = next(batch_iter, _END)
        if batch is _END:
            break
        batch = move_to(batch, device)
        output, loss = _loss(model, task, batch, distill, meter, cast)
        extra = extra_loss() if extra_loss is not None else None
        _optimizer_step(loss if extra is None else loss + extra, (optimizer, *extra_optimizers), scheduler)
        done += 1
        total += loss.detach().double()
        if on_step is not None:
            on_step(StepResult(done, batch, output, loss.detach(), None if extra is None else extra.detach()))
        if after_step is not None:
            after_step(done, float(loss.detach()), meter.info())
        if stop is not None and stop():
            break
    return float(total) / done if done else math.nan


_END = object()
