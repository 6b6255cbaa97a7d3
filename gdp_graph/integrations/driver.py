"""What a training framework's callback does for GDP, independent of the framework.

The framework owns the loss and the optimizer, so the callback cannot add ``gated.penalty()``
to the loss. It adds the penalty's *gradient* instead (``penalty().backward()`` after the
task loss's backward: the gradient of a sum is the sum of the gradients; the penalty depends on
the gates only), steps the gates with their own optimizer (``GatedModel.gate_optimizer``) and
then clears the gates' gradients, so the framework's optimizer (which usually holds every
parameter, gates included) skips them: torch optimizers skip parameters whose ``grad`` is None.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from gdp_graph.gates.finalize import finalize
from gdp_graph.gates.model import GatedModel

__all__ = ["GateDriver"]


class GateDriver:
    """Call :meth:`after_backward`, :meth:`before_optimizer_step` and :meth:`after_optimizer_step`
    around the framework's step, and :meth:`finalize` at the end."""

    def __init__(self, gated: GatedModel, gate_lr: Optional[float] = None):
        if not isinstance(gated, GatedModel):
            raise TypeError(f"GateDriver needs a GatedModel (gdp_graph.attach), got {type(gated).__name__}")
        self.gated = gated
        self.gate_lr = gate_lr
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
            penalty.backward()
        self._penalty_added = True

    def before_optimizer_step(self) -> None:
        """Step the gates, then hide their gradients from the framework's optimizer."""
        self.start()
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
        self.gated.step(global_step)

    def metrics(self) -> dict[str, float]:
        report = self.gated.report()
        out = {"gdp/lambda": float(report["lambda"]), "gdp/kept": float(report["hard_fraction"]),
               "gdp/target": float(report["target"]), "gdp/zero": float(report["zero"])}
        if report.get("epsilon") is not None:
            out["gdp/epsilon"] = float(report["epsilon"])
        return out

    def finalize(self) -> torch.nn.Module:
        """The exact smaller model (kept as :attr:`pruned`, its report as :attr:`finalize_report`)."""
        self.pruned, self.finalize_report = finalize(self.gated)
        return self.pruned
