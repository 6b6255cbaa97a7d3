"""The GDP phase of ``gdp-graph train``.

The gated model trains (task loss + the penalty, gates stepped); its gates are fixed at
``fix_at`` and it trains on with them fixed, then it is finalized at the end of the phase. With
``finalize_at_cut`` (``gdp-graph train --finalize-at-cut``) it is finalized at the first epoch
end after the cut instead, and the exact smaller model trains the rest of the phase on the same
learning-rate schedule: it computes what the gated model computes (finalize checks it) at the
pruned cost, which matters for long phases. SGD's momentum restarts there (the smaller model has
new parameters); on the short preset it bought no accuracy for a few seconds saved
(benchmarks/results/cifar_preset_tuning.json, "--finalize-at-cut"), so it is not the default.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from rich.console import Console
from torch import nn

from gdp_graph.gates.finalize import FinalizeReport, finalize
from gdp_graph.gates.model import GatedModel
from gdp_graph.recipes.cifar10.training import cosine_lr_factor, cosine_schedule, make_optimizer, train_one_epoch

__all__ = ["GateOptimizer", "gdp_phase"]

#: per-epoch fields of the gates' state kept in the trajectory
TRAJECTORY_KEYS = ("lambda", "epsilon", "hard_fraction", "soft_fraction", "zero", "middle", "fixed")


class GateOptimizer:
    """SGD with momentum for the weights (the cosine schedule drives them) and the gates' own
    optimizer (``GatedModel.gate_optimizer``: Adam, one learning rate for every gate)."""

    def __init__(self, gated: GatedModel, lr: float, gate_lr: float):
        gates = gated.gate_parameters()
        self.weights = make_optimizer(gated.weight_parameters(), lr)  # the recipe's SGD preset
        self.gates = gated.gate_optimizer(gate_lr) if gates else None
        self.param_groups = self.weights.param_groups  # the cosine schedule drives the weights

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.weights.zero_grad(set_to_none=set_to_none)
        if self.gates is not None:
            self.gates.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.weights.step()
        if self.gates is not None:
            self.gates.step()


def gdp_phase(gated: GatedModel, train: Any, *, epochs: int, lr: float, gate_lr: float, device: torch.device,
              autocast: bool, console: Console, trajectory: list[dict[str, Any]],
              on_finalized: Callable[[nn.Module, FinalizeReport], None],
              finalize_at_cut: bool = False) -> tuple[nn.Module, FinalizeReport, int]:
    """Train ``gated`` for ``epochs`` epochs of ``train`` and finalize it (with
    ``finalize_at_cut``: at the first epoch end after the gates are fixed, the finalized model
    training the rest, see the module docstring); ``on_finalized(pruned, report)`` runs right
    after finalizing, while the pruned model still equals the gated one.
    Returns the pruned model (trained to the end of the phase), the finalize report and the
    number of epochs the gated model trained."""
    total = max(1, epochs * len(train))
    opt: Any = GateOptimizer(gated, lr, gate_lr)
    sched = cosine_schedule(opt.weights, total)
    net: nn.Module = gated
    step, result, gated_epochs = 0, None, epochs
    for epoch in range(epochs):
        train.set_epoch(epoch)
        gating = result is None
        stats = train_one_epoch(net, train, opt, device=device, extra_loss=gated.penalty if gating else None,
                                on_step=(lambda _: gated.step()) if gating else None, autocast=autocast,
                                scheduler=sched, progress=True, start_step=step,
                                description=f"gdp {epoch + 1}/{epochs}")
        step = stats["global_step"]
        g = gated.report()
        trajectory.append({"epoch": epoch + 1, "train_acc": stats["accuracy"],
                           "model": "gated" if gating else "finalized", **{k: g[k] for k in TRAJECTORY_KEYS}})
        console.print(f"  gdp epoch {epoch + 1}/{epochs}: loss {stats['loss']:.3f} (task {stats['task_loss']:.3f}), "
                      f"train acc {stats['accuracy']:.3f}, {stats['seconds']:.0f}s; lambda {g['lambda']:.3g}, "
                      f"kept {g['hard_fraction']:.3f} (soft {g['soft_fraction']:.3f}), zero {g['zero']:.2f}"
                      + (", gates fixed" if g["fixed"] else "") + ("" if gating else ", finalized model"))
        if finalize_at_cut and result is None and bool(gated.fixed) and epoch + 1 < epochs:
            result = finalize(gated)
            on_finalized(*result)
            gated_epochs = epoch + 1
            net = result[0]
            opt = make_optimizer(net, lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i, start=step: cosine_lr_factor(start + i, total))
            console.print(f"  gates fixed at step {gated.fix_report['step']}: the finalized model trains on")
    if result is None:
        result = finalize(gated)
        on_finalized(*result)
    return result[0], result[1], gated_epochs
