"""A PyTorch Lightning callback (``pip install 'gdp-graph[lightning]'``)::

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = my_net()                      # the attribute the callback gates
        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.model(x), y)   # no penalty here: the callback adds it
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    gdp = GdpCallback(policy="default", example_inputs=torch.randn(2, 3, 32, 32))
    pl.Trainer(max_epochs=5, callbacks=[gdp]).fit(Classifier(), loader)
    pruned = gdp.pruned                                # the exact smaller model

In ``setup`` the callback replaces ``pl_module.<attribute>`` by the gated model (before
``configure_optimizers``, so your optimizer holds the gated model's weights), with the gated
phase lasting ``trainer.estimated_stepping_batches``. At the end of ``fit`` it finalizes and,
with ``replace=True``, puts the pruned model back in the attribute.

``strategy="ddp"`` works as it is: every rank attaches the same gates (DDP broadcasts rank 0's
weights, gates included, when it wraps the module), the gates' task gradients are averaged with
the rest, and every rank makes the same cut and ends with the same plan (see
:mod:`gdp_graph.integrations.driver`). Use ``sync_batchnorm=True`` where the model has BatchNorm,
so that the statistics absorbed at the end are the same on every rank.

Lightning checkpoints resume mid-gate-phase (``trainer.fit(module, loader, ckpt_path=...)``): the
gates, epsilon, the step counters, lambda and its controller are in the module's own state dict
(``pl_module.<attribute>`` is the gated model from ``setup`` on, before Lightning restores it),
and the callback's :meth:`~GdpCallback.state_dict` holds the rest, the gates' own optimizer and
the last global step (:meth:`GateDriver.state_dict`).
"""

from __future__ import annotations

from typing import Any, Optional

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - the optional extra
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise ImportError("GdpCallback needs PyTorch Lightning: pip install 'gdp-graph[lightning]'") from None

from gdp_graph.gates.attach import PolicyLike, attach
from gdp_graph.integrations.driver import GateDriver

__all__ = ["GdpCallback"]


class GdpCallback(pl.Callback):
    def __init__(self, policy: PolicyLike = None, *, example_inputs: Any, attribute: str = "model",
                 gate_lr: Optional[float] = None, replace: bool = True, log: bool = True):
        self.policy = policy
        self.example_inputs = example_inputs
        self.attribute = attribute
        self.gate_lr = gate_lr
        self.replace = replace
        self.log = log
        self.driver: Optional[GateDriver] = None
        self._restored: Optional[dict[str, Any]] = None  # a checkpoint's driver state, until the optimizer exists

    @property
    def pruned(self):
        return self.driver.pruned if self.driver is not None else None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit" or self.driver is not None:
            return
        if "16" in str(trainer.precision) and "bf16" not in str(trainer.precision):
            raise ValueError("GdpCallback: float16 mixed precision scales the loss but not the penalty added by the "
                             "callback; use precision='bf16-mixed' or 32")
        model = getattr(pl_module, self.attribute, None)
        if model is None:
            raise AttributeError(f"GdpCallback: the LightningModule has no attribute {self.attribute!r} "
                                 "holding the model")
        steps = int(trainer.estimated_stepping_batches)
        epochs = max(1, int(trainer.max_epochs or 1))
        gated = attach(model, self.policy, example_inputs=self.example_inputs, total_steps=steps,
                       steps_per_epoch=max(1, steps // epochs))
        setattr(pl_module, self.attribute, gated)
        self.driver = GateDriver(gated, self.gate_lr)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.driver.start()
        self._restore()

    def state_dict(self) -> dict[str, Any]:
        """What Lightning saves in its checkpoints for this callback: the driver's state (the
        gates' optimizer, the last global step); the gates themselves are in the module's."""
        return self.driver.state_dict() if self.driver is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) or None
        self._restore()

    def _restore(self) -> None:
        """Load a checkpoint's driver state once the gates' optimizer exists: Lightning loads callback
        states before ``on_fit_start`` (after it for strategies that restore after setup), and the
        optimizer is made there, once the model is on its device, so that its state follows."""
        if self._restored is not None and self.driver is not None and self.driver.gate_optimizer is not None:
            self.driver.load_state_dict(self._restored)
            self._restored = None

    def on_after_backward(self, trainer, pl_module) -> None:
        self.driver.after_backward()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.driver.before_optimizer_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.driver.after_optimizer_step(trainer.global_step)
        if self.log:
            pl_module.log_dict(self.driver.metrics(), on_step=True, prog_bar=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        pruned = self.driver.finalize()
        if self.replace:
            setattr(pl_module, self.attribute, pruned)
