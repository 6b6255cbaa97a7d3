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

Checkpoints (``save_strategy``) resume mid-gate-phase with ``trainer.train(resume_from_checkpoint=...)``.
The Trainer writes the model's state dict with safetensors, which holds tensors only: while it
saves, the callback leaves the gated model's extra state (lambda and its controller, a dict) out
of that state dict and writes it to ``gdp_state.pt`` in the checkpoint folder, with the gates'
optimizer and the last global step (:meth:`GateDriver.state_dict`). The gates, epsilon and the
step counters are tensors and go with the weights. On resume, the callback reads
``gdp_state.pt`` from ``args.resume_from_checkpoint`` when that is a folder, else from
``args.output_dir/checkpoint-<global step>`` (the folder ``resume_from_checkpoint=True`` picks),
and stops with :class:`GateError` when neither has one. (The Trainer warns on resume that
``_extra_state`` is missing from the weights it loaded: that is the part in ``gdp_state.pt``.)
After training, keep ``gdp.pruned``: ``trainer.save_model()`` of the gated model itself fails in
safetensors, its state dict holding that dict again.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import torch

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError:  # pragma: no cover - the optional extra
    raise ImportError("GdpTrainerCallback needs transformers: pip install 'gdp-graph[hf]'") from None

from gdp_graph.gates.bank import GateError
from gdp_graph.gates.model import GatedModel
from gdp_graph.integrations.driver import GateDriver

__all__ = ["GdpTrainerCallback", "STATE_FILE"]

#: the callback's file in each checkpoint folder
STATE_FILE = "gdp_state.pt"


class GdpTrainerCallback(TrainerCallback):
    def __init__(self, gated: GatedModel, gate_lr: Optional[float] = None, finalize: bool = True):
        self.driver = GateDriver(gated, gate_lr)
        # GatedModel.forward takes **kwargs (passed to the traced graph, which has only the
        # model's own inputs): tell the Trainer not to pass num_items_in_batch to it
        if not hasattr(gated, "accepts_loss_kwargs"):
            gated.accepts_loss_kwargs = False
        # read by the Trainer when a resumed checkpoint lacks keys (PreTrainedModel's default; a
        # list would have it call tie_weights): it then warns that '_extra_state' is missing
        if not hasattr(gated, "_keys_to_ignore_on_save"):
            gated._keys_to_ignore_on_save = None
        self.finalize = finalize
        self._saving = False  # between a step's end and the Trainer's save: no dict in the state dict
        # a partial, not a bound method: torch sets an attribute on the hook
        gated.register_state_dict_post_hook(functools.partial(GdpTrainerCallback._tensors_only, self))

    def _tensors_only(self, module: Any, state_dict: dict, prefix: str, local_metadata: Any) -> None:
        if self._saving:
            state_dict.pop(prefix + "_extra_state", None)  # in STATE_FILE instead

    @property
    def pruned(self):
        return self.driver.pruned

    def on_train_begin(self, args, state, control, **kwargs):
        self.driver.start()
        if state.global_step > 0:  # resumed: the Trainer loaded the weights, gates and counters
            self._resume(args, state.global_step)

    def _resume(self, args: Any, step: int) -> None:
        folders = [args.resume_from_checkpoint] if isinstance(args.resume_from_checkpoint, str) else []
        folders.append(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}"))
        found = [f for f in folders if os.path.isfile(os.path.join(f, STATE_FILE))]
        if not found:
            raise GateError(f"GdpTrainerCallback: resuming at step {step}, but {' or '.join(folders)} has no "
                            f"{STATE_FILE} (the gates' optimizer, lambda and its controller); set "
                            "TrainingArguments(resume_from_checkpoint=) to the folder resumed from")
        saved = torch.load(os.path.join(found[0], STATE_FILE), map_location="cpu", weights_only=False)
        self.driver.gated.set_extra_state(saved["gated_extra"])
        self.driver.load_state_dict(saved["driver"])

    def on_step_begin(self, args, state, control, **kwargs):
        self._saving = False

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._saving = False
        self.driver.before_optimizer_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.driver.after_optimizer_step(state.global_step)
        self._saving = True  # the Trainer may save now (after every callback's on_step_end)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._saving = True

    def on_save(self, args, state, control, **kwargs):
        self._saving = False
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            torch.save({"driver": self.driver.state_dict(), "gated_extra": self.driver.gated.get_extra_state()},
                       os.path.join(folder, STATE_FILE))

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = self.driver.metrics()
        if logs is not None:
            logs.update(metrics)  # what the Trainer prints and sends to its loggers
        if state.log_history:
            state.log_history[-1].update(metrics)  # appended before on_log runs

    def on_train_end(self, args, state, control, **kwargs):
        self._saving = False
        if self.finalize:
            self.driver.finalize()
