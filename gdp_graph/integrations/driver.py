"""What a training framework's callback does for GDP, independent of the framework.

The framework owns the loss and the optimizer, so the callback cannot add ``gated.penalty()``
to the loss. It adds the penalty's *gradient* instead (``penalty().backward()`` after the
task loss's backward: the gradient of a sum is the sum of the gradients; the penalty depends on
the gates only), steps the gates with their own optimizer (``GatedModel.gate_optimizer``) and
then clears the gates' gradients, so the framework's optimizer (which usually holds every
parameter, gates included) skips them: torch optimizers skip parameters whose ``grad`` is None.

Under data parallelism (DDP, a ``torchrun`` / ``accelerate launch`` Trainer) the gates are ordinary
parameters of the wrapped model, so DDP averages their task gradients like any other. The
penalty's gradient is taken with ``torch.autograd.grad`` and added by hand: a second
``backward()`` would fire DDP's gradient hooks outside a forward. After each optimizer step rank
0's ``theta`` is broadcast (a few kilobytes), so that what the schedule and the lambda controller
read (the gates' cost) is the same on every rank by construction, not by floating-point luck:
every rank makes the same cut. :meth:`GateDriver.finalize` runs on every rank (each keeps the
pruned model it trains on) and checks that all ranks reached rank 0's plan.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

from gdp_graph.gates.bank import GateError
from gdp_graph.gates.finalize import finalize
from gdp_graph.gates.model import GatedModel

__all__ = ["GateDriver"]


class GateDriver:
    """Call :meth:`after_backward`, :meth:`before_optimizer_step` and :meth:`after_optimizer_step`
    around the framework's step, and :meth:`finalize` at the end."""

    def __init__(self, gated: GatedModel, gate_lr: Optional[float] = None, reduce_gate_grads: bool = False):
        if not isinstance(gated, GatedModel):
            raise TypeError(f"GateDriver needs a GatedModel (gdp_graph.attach), got {type(gated).__name__}")
        self.gated = gated
        self.gate_lr = gate_lr
        #: average the gates' gradients over the ranks before stepping them: for FSDP2 with
        #: replicated gates (integrations.fsdp.shard_weights), where nothing else does; DDP does
        self.reduce_gate_grads = reduce_gate_grads
        self.gate_optimizer: Optional[torch.optim.Optimizer] = None
        self._penalty_added = False
        self._last_step: Optional[int] = None
        self.pruned: Optional[torch.nn.Module] = None
        self.finalize_report: Any = None

    def start(self) -> None:
        """Create the gates' optimizer (after the model reached its device)."""
        if self.gate_optimizer is None:
            self.gate_optimizer = (self.gated.gate_optimizer(self.gate_lr) if self.gate_lr is not None
                                   else self.gated.gate_optimizer())

    def after_backward(self) -> None:
        """Accumulate the penalty's gradient onto the gates (once per optimizer step)."""
        if self._penalty_added:
            return
        penalty = self.gated.penalty()
        if penalty.requires_grad:
            params = [p for p in self.gated.gate_parameters() if p.requires_grad]
            grads = torch.autograd.grad(penalty, params, allow_unused=True)
            for p, g in zip(params, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        self._penalty_added = True

    def before_optimizer_step(self) -> None:
        """Step the gates, then hide their gradients from the framework's optimizer."""
        self.start()
        if self.reduce_gate_grads and world_size() > 1:  # a penalty part already added is the same on every rank
            for p in self.gated.gate_parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world_size()
        self.after_backward()  # frameworks that skip the backward hook still get the penalty
        self.gate_optimizer.step()
        for p in self.gated.gate_parameters():
            p.grad = None
        self._penalty_added = False

    def after_optimizer_step(self, global_step: int) -> None:
        """Anneal epsilon, steer lambda, fix the gates at ``fix_at`` (once per global step)."""
        if global_step == self._last_step:
            return
        self._last_step = global_step
        if world_size() > 1:
            with torch.no_grad():
                for p in self.gated.gate_parameters():
                    dist.broadcast(p.data, src=0)
        self.gated.step(global_step)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs beyond the gated model's own state dict (gates, schedule,
        lambda controller): the gates' optimizer and the last global step."""
        return {"gate_optimizer": self.gate_optimizer.state_dict() if self.gate_optimizer is not None else None,
                "last_step": self._last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start()
        if state.get("gate_optimizer") is not None:
            self.gate_optimizer.load_state_dict(state["gate_optimizer"])
        self._last_step = state.get("last_step")

    def metrics(self) -> dict[str, float]:
        report = self.gated.report()
        out = {"gdp/lambda": float(report["lambda"]), "gdp/kept": float(report["hard_fraction"]),
               "gdp/target": float(report["target"]), "gdp/zero": float(report["zero"])}
        if report.get("epsilon") is not None:
            out["gdp/epsilon"] = float(report["epsilon"])
        return out

    def finalize(self) -> torch.nn.Module:
        """The exact smaller model (kept as :attr:`pruned`, its report as :attr:`finalize_report`).

        Raises:
            GateError: under data parallelism, a rank reached another plan than rank 0's.
        """
        from gdp_graph.integrations.fsdp import gather_full_weights, is_sharded
        if is_sharded(self.gated):
            gather_full_weights(self.gated)
        self.pruned, self.finalize_report = finalize(self.gated)
        if world_size() > 1:
            plans = [None] * world_size()
            dist.all_gather_object(plans, self.finalize_report.plan.to_dict())
            differ = [rank for rank, plan in enumerate(plans) if plan != plans[0]]
            if differ:
                raise GateError(f"finalize: ranks {differ} reached another plan than rank 0 (the gates diverged)")
        return self.pruned


def world_size() -> int:
    """The number of data-parallel processes (1 outside torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
