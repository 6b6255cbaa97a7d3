"""The generic GDP driver behind ``gdp-graph prune``: any model, any TASK (see
:mod:`gdp_graph.recipes.task`), a policy, and a schedule.

gated phase (task loss + ``gated.penalty()``; ``gated.step()`` anneals epsilon, steers lambda and
fixes the gates at the policy's ``fix_at``) -> ``finalize`` (the exact smaller model) ->
optional fine-tuning -> figures. A :class:`History` records lambda, epsilon, the kept fraction
and the free gates' values along the way, for the pictures.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from gdp_graph.graph.model_copy import deepcopy_model
from gdp_graph.recipes.evaluation import evaluate
from gdp_graph.recipes.recovery import make_optimizer
from gdp_graph.recipes.task import Task, TaskError, move_to

__all__ = ["Schedule", "History", "PruneResult", "train_epochs", "run_prune", "free_gate_values", "group_gate_values"]


@dataclass(frozen=True)
class Schedule:
    """Epochs and learning rates of the phases (flags and the task's defaults fill it)."""

    epochs: int = 3
    finetune_epochs: int = 0
    lr: float = 0.01
    finetune_lr: float = 0.001
    gate_lr: Optional[float] = None  #: None: the gates' own default (``GatedModel.gate_optimizer``)
    optimizer: str = "sgd"  #: sgd (momentum 0.9) or adam
    weight_decay: float = 0.0
    snapshots_per_epoch: int = 4  #: gate-value snapshots per epoch for the pictures
    #: a step budget replacing epochs: gdp trains gates up to the cut (fix_at of the budget),
    #: then every method recovers for the rest; one-shot methods recover for all of it
    steps: Optional[int] = None
    method: str = "gdp"  #: gdp, or a one-shot method of gdp_graph.recipes.oneshot
    calibration_batches: int = 8  #: training batches the one-shot importance is measured on
    evaluate_original: bool = True  #: evaluate the unpruned model first (metrics["original"])


@dataclass
class History:
    """The gated phase, sampled ``snapshots_per_epoch`` times per epoch."""

    step: list[int] = field(default_factory=list)
    lam: list[float] = field(default_factory=list)
    epsilon: list[Optional[float]] = field(default_factory=list)
    hard_fraction: list[float] = field(default_factory=list)
    soft_fraction: list[float] = field(default_factory=list)
    zero_gates: list[int] = field(default_factory=list)
    gates: list[list[float]] = field(default_factory=list)  #: free unit gate values per snapshot
    target: float = 1.0
    metric: str = "flops"

    def record(self, gated: Any) -> None:
        report = gated.report()
        values = free_gate_values(gated)
        self.step.append(int(report["step"]))
        self.lam.append(float(report["lambda"]))
        self.epsilon.append(report.get("epsilon"))
        self.hard_fraction.append(float(report["hard_fraction"]))
        self.soft_fraction.append(float(report["soft_fraction"]))
        self.zero_gates.append(int((values == 0).sum()))
        self.gates.append([round(float(v), 6) for v in values])
        self.target, self.metric = float(report["target"]), str(report["metric"])

    def to_dict(self, with_gates: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_gates:
            data.pop("gates")
        return data


@dataclass
class PruneResult:
    pruned: nn.Module
    plan: Any
    finalize_report: Any
    history: History
    metrics: dict[str, Optional[float]]
    gates_report: dict[str, Any]
    seconds: dict[str, float]
    analysis: Any = None  #: the gated model's analysis (the class a pruned GraphModule can be put back into)


def free_gate_values(gated: Any) -> torch.Tensor:
    """The gates of every unit that may be removed (frozen units excluded), on the CPU."""
    parts = []
    with torch.no_grad():
        for gid, gates in gated.group_gates().items():
            frozen = gated.analysis.groups[gid].frozen_units.to(gates.device)
            parts.append(gates.detach()[~frozen].float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def group_gate_values(gated: Any) -> dict[int, torch.Tensor]:
    """{group id: its free units' gate values} on the CPU, for the live view."""
    out = {}
    with torch.no_grad():
        for gid, gates in gated.group_gates().items():
            frozen = gated.analysis.groups[gid].frozen_units.to(gates.device)
            out[gid] = gates.detach()[~frozen].float().cpu()
    return out


def steps_per_epoch(task: Task) -> int:
    try:
        n = len(task.train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TaskError(f"TASK {task.name}: train_loader has no len(); the gated phase needs the number of "
                        "steps per epoch to schedule epsilon and lambda") from None
    if n <= 0:
        raise TaskError(f"TASK {task.name}: train_loader is empty")
    return n


def train_epochs(model: nn.Module, task: Task, device: torch.device, epochs: int, optimizer: torch.optim.Optimizer,
                 *, extra_loss: Optional[Callable[[], torch.Tensor]] = None,
                 after_step: Optional[Callable[[int, float], None]] = None,
                 extra_optimizers: Sequence[torch.optim.Optimizer] = ()) -> float:
    """Train ``epochs`` passes over the train loader with a cosine learning rate (the step loop
    of :func:`gdp_graph.recipes.recovery.train_steps`); returns the mean training loss.
    ``after_step(step, loss)`` runs after every optimizer step (the gates' ``step`` goes there)."""
    from gdp_graph.recipes.recovery import train_steps

    steps = epochs * steps_per_epoch(task)
    if steps == 0:
        return math.nan
    batches = (batch for _ in range(epochs) for batch in task.train_loader)
    hook = None if after_step is None else (lambda step, loss, _info: after_step(step, loss))
    return train_steps(model, task, device, steps, optimizer, extra_loss=extra_loss, after_step=hook,
                       extra_optimizers=tuple(extra_optimizers), batches=batches)


def run_prune(model: nn.Module, example_inputs: Any, task: Task, policy: Any, schedule: Schedule,
              device: torch.device, *, on_progress: Optional[Callable[[str, int, int, dict], None]] = None,
              distill: Optional[Any] = None) -> PruneResult:
    """The whole pipeline on ``model`` (left untouched: gates go on a traced copy).

    ``schedule.method`` ``gdp`` trains gates (for ``schedule.epochs``, or up to the cut when
    ``schedule.steps`` is a step budget) and finalizes them; a one-shot method prunes from
    importance scores instead. Recovery then trains the pruned model (``finetune_epochs``, or the
    rest of the step budget). ``distill``: a policy's ``distill`` settings (temperature, alpha):
    every training step then mixes in logit distillation from a frozen copy of ``model``.
    """
    from gdp_graph.recipes.recovery import Distillation, frozen_teacher
    seconds: dict[str, float] = {}
    teacher = (None if distill is None
               else Distillation(frozen_teacher(model, device), distill.temperature, distill.alpha))
    model = deepcopy_model(model).to(device)
    # positional inputs (a tuple) or keyword inputs (a dict, as Hugging Face models take)
    inputs = move_to(example_inputs if isinstance(example_inputs, dict) else tuple(example_inputs), device)
    metrics: dict[str, Optional[float]] = {"original": evaluate(model, task, device) if schedule.evaluate_original
                                           else None}
    started = time.perf_counter()
    if schedule.method == "gdp":
        pruned, report, history, gates_report, analysis, used = _gdp_phase(model, inputs, task, policy, schedule,
                                                                           device, on_progress, teacher, metrics)
    else:
        from gdp_graph.recipes.oneshot import one_shot_prune
        pruned, report, analysis = one_shot_prune(model, inputs, task, policy, schedule.method,
                                                  calibration_batches=schedule.calibration_batches)
        history, used = History(target=policy.target.fraction, metric=policy.target.metric), 0
        gates_report = {"method": schedule.method, "calibration_batches": schedule.calibration_batches}
    seconds["gated" if schedule.method == "gdp" else "one_shot"] = time.perf_counter() - started
    pruned.to(device)
    metrics["finalized"] = evaluate(pruned, task, device)
    started = time.perf_counter()
    if _recover(pruned, task, schedule, device, on_progress, teacher, report, policy, used):
        metrics["fine_tuned"] = evaluate(pruned, task, device)
    seconds["finetune"] = time.perf_counter() - started
    pruned.eval()
    return PruneResult(pruned, report.plan, report, history, metrics, gates_report, seconds, analysis)


def _gdp_phase(model: nn.Module, inputs: Any, task: Task, policy: Any, schedule: Schedule, device: torch.device,
               on_progress: Optional[Callable], teacher: Any, metrics: dict) -> tuple:
    """Gates attached, trained (epochs, or steps up to the cut), finalized: (pruned, report,
    history, the gates' report, analysis, steps used)."""
    from gdp_graph.gates.attach import attach
    from gdp_graph.gates.finalize import finalize
    from gdp_graph.recipes.recovery import train_steps
    n = steps_per_epoch(task) if schedule.steps is None else max(1, schedule.steps)
    total = schedule.epochs * n if schedule.steps is None else schedule.steps
    gated = attach(model, policy, example_inputs=inputs, total_steps=total, steps_per_epoch=n)
    if gated.metric == "latency" and gated.policy.latency.corrections > 0:
        from gdp_graph.latency import cut_measure  # the cut at fix_at corrected by measured latency
        gated.cut_measure = cut_measure(gated.analysis, gated.policy.latency)
    gated.to(device).train()
    from gdp_graph.importance import init_gates
    from gdp_graph.recipes.oneshot import _feed
    from gdp_graph.recipes.recovery import cycle
    # the policy's regularizer.init: gates start ranked by a one-shot importance
    init_gates(gated, cycle(task.train_loader, schedule.calibration_batches), task.loss, inputs=_feed(task),
               max_batches=schedule.calibration_batches)
    optimizer = make_optimizer(gated.weight_parameters(), schedule.lr, weight_decay=schedule.weight_decay,
                               kind=schedule.optimizer)
    gate_opt = gated.gate_optimizer(schedule.gate_lr) if schedule.gate_lr is not None else gated.gate_optimizer()
    history = History()
    history.record(gated)
    every = max(1, n // max(1, schedule.snapshots_per_epoch))

    def after_gated_step(step: int, loss: float, speed: Optional[dict] = None) -> None:
        gated.step()
        snapshot = step % every == 0 or step == total or bool(gated.fixed)
        if snapshot:
            history.record(gated)
        if on_progress is not None:
            info = {"loss": loss, "lambda": history.lam[-1], "epsilon": history.epsilon[-1],
                    "kept": history.hard_fraction[-1], "soft": history.soft_fraction[-1], "target": history.target,
                    "zeros": history.zero_gates[-1], **(speed or {})}
            if snapshot or step == 1:
                info["groups"] = group_gate_values(gated)
            on_progress("gated", step, total, info)

    if schedule.steps is None and teacher is None:
        train_epochs(gated, task, device, schedule.epochs, optimizer, extra_loss=gated.penalty,
                     after_step=after_gated_step, extra_optimizers=(gate_opt,))
        metrics["gated"] = evaluate(gated, task, device)
    else:  # with a step budget the gated phase ends at the cut: the rest recovers the smaller model
        stop = None if schedule.steps is None else (lambda: bool(gated.fixed))
        train_steps(gated, task, device, total, optimizer, extra_loss=gated.penalty, after_step=after_gated_step,
                    extra_optimizers=(gate_opt,), distill=teacher, stop=stop)
        if schedule.steps is None:
            metrics["gated"] = evaluate(gated, task, device)
    used = int(gated.report()["step"])
    pruned, report = finalize(gated)
    # the gates' state, and what the cut did (with a latency target: the measured rounds)
    return pruned, report, history, {**gated.report(), "fix": dict(gated.fix_report)}, gated.analysis, used


def _recover(pruned: nn.Module, task: Task, schedule: Schedule, device: torch.device, on_progress: Optional[Callable],
             teacher: Any, report: Any, policy: Any, used: int) -> bool:
    """Fine-tune the pruned model (epochs, or the rest of the step budget); False when there is
    nothing to do."""
    from gdp_graph.recipes.oneshot import kept_fraction
    from gdp_graph.recipes.recovery import train_steps
    steps = (schedule.steps - used) if schedule.steps is not None else None
    if (steps is not None and steps <= 0) or (steps is None and schedule.finetune_epochs <= 0):
        return False
    total = steps if steps is not None else schedule.finetune_epochs * steps_per_epoch(task)
    kept = kept_fraction(report, policy.target.metric)

    def after_step(step: int, loss: float, speed: Optional[dict] = None) -> None:
        if on_progress is not None:
            on_progress("fine-tune", step, total, {"loss": loss, "kept_model": kept, **(speed or {})})

    for p in pruned.parameters():
        p.requires_grad_(True)
    params = [p for p in pruned.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, schedule.finetune_lr, weight_decay=schedule.weight_decay,
                               kind=schedule.optimizer)
    if steps is None and teacher is None:
        train_epochs(pruned, task, device, schedule.finetune_epochs, optimizer, after_step=after_step)
    else:
        train_steps(pruned, task, device, total, optimizer, after_step=after_step, distill=teacher)
    return True
