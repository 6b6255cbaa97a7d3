"""Resuming mid-gate-phase from a framework's own checkpoint: a Lightning ``ckpt_path`` and a
Hugging Face ``resume_from_checkpoint``, each saved before the cut, end exactly as the run that
never stopped (gates, lambda, controller, plan and pruned weights); the Lightning run resumed
without the callback's state (the gates' Adam moments) does not, so the test sees that state."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tests.fixtures.ddp_callbacks import POLICY as DDP_POLICY, Net, Synthetic
from tests.fixtures.lightning_module import classifier

#: steered lambda, the cut at 0.6 of the gated phase: after the first checkpoint
POLICY = {**DDP_POLICY, "regularizer": {**DDP_POLICY["regularizer"], "fix_at": 0.6}}
needs_lightning = pytest.mark.skipif(importlib.util.find_spec("pytorch_lightning") is None
                                     and importlib.util.find_spec("lightning") is None,
                                     reason="the 'lightning' extra is not installed")
needs_hf = pytest.mark.skipif(importlib.util.find_spec("transformers") is None
                              or importlib.util.find_spec("accelerate") is None,
                              reason="the 'hf' extra is not installed")


def _outcome(driver) -> dict:
    gated = driver.gated
    return {"theta": [p.detach().clone() for p in gated.gate_parameters()], "lambda": gated.lam,
            "controller": gated.controller.state_dict(), "fixed": bool(gated.fixed),
            "plan": driver.finalize_report.plan.to_dict()["keep"], "pruned": driver.pruned.state_dict()}


def _assert_same(a: dict, b: dict) -> None:
    assert a["fixed"] and b["fixed"] and a["plan"] == b["plan"]
    assert a["lambda"] == b["lambda"] and a["controller"] == b["controller"]
    assert all(torch.equal(x, y) for x, y in zip(a["theta"], b["theta"]))
    assert a["pruned"].keys() == b["pruned"].keys()
    assert all(torch.equal(a["pruned"][k], b["pruned"][k]) for k in a["pruned"])


def _lightning_fit(root: Path, ckpt_path: str | None = None):
    from gdp_graph.integrations.lightning import GdpCallback, pl

    torch.manual_seed(0)
    gdp = GdpCallback(policy=POLICY, example_inputs=torch.randn(2, 3, 8, 8), log=False)
    every_epoch = pl.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1,
                                               filename="{epoch}")
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, callbacks=[gdp, every_epoch])
    trainer.fit(classifier(Net()), DataLoader(Synthetic(n=64), batch_size=16), ckpt_path=ckpt_path)
    return gdp


@needs_lightning
def test_lightning_resumes_mid_gate_phase_from_its_checkpoint(tmp_path):
    whole = _lightning_fit(tmp_path / "whole")
    ckpt = torch.load(tmp_path / "whole" / "epoch=0.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and whole.driver.gated.fix_report["step"] > 4  # saved before the cut
    assert ckpt["callbacks"]["GdpCallback"]["gate_optimizer"]["state"]  # the gates' Adam moments
    resumed = _lightning_fit(tmp_path / "resumed", str(tmp_path / "whole" / "epoch=0.ckpt"))
    _assert_same(_outcome(resumed.driver), _outcome(whole.driver))
    del ckpt["callbacks"]["GdpCallback"]  # a checkpoint without the callback's state: fresh gate moments
    torch.save(ckpt, tmp_path / "without.ckpt")
    without = _lightning_fit(tmp_path / "without", str(tmp_path / "without.ckpt"))
    theta = zip(_outcome(without.driver)["theta"], _outcome(whole.driver)["theta"])
    assert any(not torch.equal(x, y) for x, y in theta)


def _hf_train(out: Path, resume: str | None = None):
    from transformers import Trainer, TrainingArguments

    import gdp_graph as G
    from gdp_graph.integrations.hf import GdpTrainerCallback
    torch.manual_seed(0)
    steps = 12
    gated = G.attach(Net(), POLICY, example_inputs=torch.randn(2, 3, 8, 8), total_steps=steps)
    gdp = GdpTrainerCallback(gated)
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=16,
                             learning_rate=0.01, report_to=[], save_strategy="steps", save_steps=4, use_cpu=True,
                             remove_unused_columns=False, disable_tqdm=True, logging_steps=100)
    trainer = Trainer(model=gated, args=args, train_dataset=Synthetic(as_dict=True), callbacks=[gdp],
                      compute_loss_func=lambda logits, labels, num_items_in_batch=None: F.cross_entropy(logits, labels))
    trainer.train(resume_from_checkpoint=resume)
    return gdp


@needs_hf
def test_hf_trainer_saves_checkpoints_and_resumes_mid_gate_phase(tmp_path):
    from gdp_graph.gates.bank import GateError
    from gdp_graph.integrations.hf import STATE_FILE
    whole = _hf_train(tmp_path / "whole")  # safetensors checkpoints of a gated model (a dict extra state)
    assert whole.driver.gated.fix_report["step"] > 4 and (tmp_path / "whole" / "checkpoint-4" / STATE_FILE).is_file()
    assert "_extra_state" in whole.driver.gated.state_dict()  # left out only while the Trainer saves
    resumed = _hf_train(tmp_path / "whole", resume=str(tmp_path / "whole" / "checkpoint-4"))
    _assert_same(_outcome(resumed.driver), _outcome(whole.driver))
    (tmp_path / "whole" / "checkpoint-4" / STATE_FILE).unlink()
    with pytest.raises(GateError, match="has no gdp_state.pt"):
        _hf_train(tmp_path / "whole", resume=str(tmp_path / "whole" / "checkpoint-4"))
