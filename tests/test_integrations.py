"""The Lightning and Hugging Face Trainer callbacks: each trains a small model on synthetic
data with the framework's own loop and optimizer, and ends with an exact, smaller model."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import gdp_graph as G
from tests.fixtures.lightning_module import classifier


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.body(x))


class Synthetic(Dataset):
    def __init__(self, n: int = 192, as_dict: bool = False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = (self.x[:, 0].mean((1, 2)) > self.x[:, 1].mean((1, 2))).long()
        self.as_dict = as_dict

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]} if self.as_dict else (self.x[i], self.y[i])


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.skipif(importlib.util.find_spec("pytorch_lightning") is None and importlib.util.find_spec("lightning") is None,
                    reason="the 'lightning' extra is not installed")
def test_lightning_callback_prunes_with_the_users_optimizer(tmp_path):
    from gdp_graph.integrations.lightning import GdpCallback, pl

    torch.manual_seed(0)
    module = classifier(Net(), weight_decay=1e-3)
    original = module.model
    before = _params(original)
    gdp = GdpCallback(policy="default", example_inputs=torch.randn(2, 3, 8, 8))
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[gdp])
    trainer.fit(module, DataLoader(Synthetic(), batch_size=32, shuffle=True))
    gated = gdp.driver.gated
    assert gated.report()["step"] == trainer.estimated_stepping_batches == 24
    assert gated.report()["fixed"]  # the schedule ran to fix_at: the callback stepped it
    assert module.model is gdp.pruned and _params(gdp.pruned) < before
    assert gdp.driver.finalize_report.check.ok
    assert _params(original) == before  # the user's module is never mutated


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("accelerate") is None,
                    reason="the 'hf' extra is not installed")
def test_hf_trainer_callback_prunes(tmp_path):
    from transformers import Trainer, TrainingArguments
    from gdp_graph.integrations.hf import GdpTrainerCallback
    torch.manual_seed(0)
    model = Net()
    steps = 24
    gated = G.attach(model, "default", example_inputs=torch.randn(2, 3, 8, 8), total_steps=steps)
    theta_before = [p.detach().clone() for p in gated.gate_parameters()]
    gdp = GdpTrainerCallback(gated)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=32,
                             learning_rate=0.01, weight_decay=0.1, report_to=[], save_strategy="no",
                             use_cpu=True, remove_unused_columns=False, logging_steps=6, disable_tqdm=True)
    trainer = Trainer(model=gated, args=args, train_dataset=Synthetic(as_dict=True), callbacks=[gdp],
                      compute_loss_func=lambda outputs, labels, num_items_in_batch=None: F.cross_entropy(outputs, labels))
    trainer.train()
    report = gated.report()
    assert report["step"] == steps and report["fixed"]
    assert any(not torch.equal(a, b.detach()) for a, b in zip(theta_before, gated.gate_parameters()))
    assert gdp.pruned is not None and _params(gdp.pruned) < _params(model)
    assert gdp.driver.finalize_report.check.ok
    logged = [entry for entry in trainer.state.log_history if "gdp/lambda" in entry]
    assert logged and all("gdp/kept" in entry for entry in logged)
