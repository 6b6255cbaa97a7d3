"""A Hugging Face ``Trainer`` callback (``pip install 'gdp-graph[hf]'``)::

    gated = gdp_graph.attach(model, "default", example_inputs=x, total_steps=max_steps)
    gdp = GdpTrainerCallback(gated)          # create it before the Trainer (see __init__)
    trainer = Trainer(model=gated, args=TrainingArguments(..., max_steps=max_steps),
                      train_dataset=data, compute_loss_func=my_loss, callbacks=[gdp])
    trainer.train()
    pruned = gdp.pruned                       # the exact smaller model, after training

The Trainer trains the gated model; the callback adds the penalty's gradient before each
optimizer step, steps the gates with their own optimizer (so the Trainer's AdamW neither decays
nor moves them), steps the schedule after each optimizer step, and finalizes at the end.
"""

from __future__ import annotations

from typing import Optional

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - the optional extra
    raise ImportError("GdpTrainerCallback needs transformers: pip install 'gdp-graph[hf]'") from None

from gdp_graph.gates.model import GatedModel
from gdp_graph.integrations.driver import GateDriver

__all__ = ["GdpTrainerCallback"]


class GdpTrainerCallback(TrainerCallback):
    def __init__(self, gated: GatedModel, gate_lr: Optional[float] = None, finalize: bool = True):
        self.driver = GateDriver(gated, gate_lr)
        # GatedModel.forward takes **kwargs (passed to the traced graph, which has only the
        # model's own inputs): tell the Trainer not to pass num_items_in_batch to it
        if not hasattr(gated, "accepts_loss_kwargs"):
            gated.accepts_loss_kwargs = False
        self.finalize = finalize

    @property
    def pruned(self):
        return self.driver.pruned

    def on_train_begin(self, args, state, control, **kwargs):
        self.driver.start()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.driver.before_optimizer_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.driver.after_optimizer_step(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = self.driver.metrics()
        if logs is not None:
            logs.update(metrics)  # what the Trainer prints and sends to its loggers
        if state.log_history:
            state.log_history[-1].update(metrics)  # appended before on_log runs

    def on_train_end(self, args, state, control, **kwargs):
        if self.finalize:
            self.driver.finalize()
