"""The CIFAR methods benchmark's own helpers on a tiny synthetic CIFAR-10: the split of training
images into trained and held-out ones, and one run per kind of method (unpruned, one-shot,
gates) landing on its FLOPs target with the record the table reads."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks import cifar_methods
from tests.fixtures.cifar10_synthetic import Synthetic


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Synthetic:
    return Synthetic(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    """Batches of 4 instead of 128 (which, dropping the last partial batch, would train on
    nothing of these 20 images)."""
    from gdp_graph.recipes.cifar10.data import cifar10, loader
    made = loader.cifar10_loaders
    monkeypatch.setattr(cifar10, "cifar10_loaders", lambda data, **kw: made(data, **{**kw, "batch_size": 4}))


def _labels(loader) -> list[int]:
    return [int(y) for _, labels in loader for y in labels]


def test_loaders_train_on_the_first_images_hold_out_the_next_and_test_on_the_test_set(synth):
    train, val, test = cifar_methods._loaders(str(synth.archive), 12, 8, seed=0)
    assert sorted(_labels(train)) == sorted(synth.train_labels[:12].tolist())
    assert _labels(val) == synth.train_labels[12:20].tolist()  # held out: never among the trained ones
    assert _labels(test) == synth.test_labels.tolist()


@pytest.fixture(scope="module")
def args(synth, tmp_path_factory) -> argparse.Namespace:
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
    checkpoint = tmp_path_factory.mktemp("ckpt") / "pretrained.pt"
    torch.manual_seed(0)
    torch.save(cifar_resnet(20).state_dict(), checkpoint)
    return argparse.Namespace(data=str(synth.archive), train_subset=12, val_subset=8, checkpoint=str(checkpoint),
                              sparse_epochs=1, finetune_epochs=1, lr=0.02, finetune_lr=0.01, gate_lr=0.02,
                              gdp_set=[], bisections={})


@pytest.mark.parametrize("method, target", [("unpruned", 1.0), ("magnitude", 0.5), ("gdp", 0.5)])
def test_run_one_records_what_the_table_reads(args, method, target):
    threads = torch.get_num_threads()
    try:
        record = cifar_methods.run_one(args, method, target, seed=0)
    finally:
        torch.set_num_threads(threads)
    for key in ("acc_gated", "acc_finalized", "acc_finetuned", "acc_val", "flops_kept", "params_kept", "seconds"):
        assert key in record, key
    if method == "unpruned":
        assert record["flops_kept"] == pytest.approx(1.0)
    elif method == "magnitude":  # one shot to the budget: on target before any training
        assert abs(record["flops_kept"] - target) <= 0.01, record["flops_kept"]
    else:  # one gated step cannot reach the target, but finalize is exact and the record complete
        assert record["acc_gated"] == pytest.approx(record["acc_finalized"])
        assert record["finalize_max_rel_diff"] <= 1e-4 and record["steps"] and record["fix"] is not None
