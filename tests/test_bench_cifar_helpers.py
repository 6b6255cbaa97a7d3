"""The CIFAR methods benchmark's own helpers on a tiny synthetic CIFAR-10: the split of training
images into trained and held-out ones, and one run per kind of method (unpruned, one-shot,
gates) landing on its FLOPs target with the record the table reads."""

from __future__ import annotations

import argparse
import warnings

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


def test_loaders_train_on_the_first_images_hold_out_the_next_two_splits_and_test_on_the_test_set(synth):
    from benchmarks.cifar_protocol import loaders

    data = loaders(str(synth.archive), 12, 4, 0, heldout2=4)
    assert sorted(_labels(data.train)) == sorted(synth.train_labels[:12].tolist())
    assert _labels(data.val) == synth.train_labels[12:16].tolist()  # held out: never among the trained ones
    assert _labels(data.heldout2) == synth.train_labels[16:20].tolist()  # and the second one after it
    assert _labels(data.test) == synth.test_labels.tolist()
    assert loaders(str(synth.archive), 12, 8, 0).heldout2 is None
    with pytest.raises(ValueError, match="20 training images, the splits need 21"):
        loaders(str(synth.archive), 12, 4, 0, heldout2=5)


@pytest.fixture(scope="module")
def args(synth, tmp_path_factory) -> argparse.Namespace:
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
    checkpoint = tmp_path_factory.mktemp("ckpt") / "pretrained.pt"
    torch.manual_seed(0)
    torch.save(cifar_resnet(20).state_dict(), checkpoint)
    return argparse.Namespace(data=str(synth.archive), train_subset=12, val_subset=4, heldout2_subset=4,
                              checkpoint=str(checkpoint),
                              sparse_epochs=1, finetune_epochs=1, lr=0.02, finetune_lr=0.01, gate_lr=0.02,
                              gdp_set=[], bisections={})


@pytest.mark.parametrize("method, target", [("unpruned", 1.0), ("magnitude", 0.5), ("gdp", 0.5)])
def test_run_one_records_what_the_table_reads(args, method, target):
    from gdp_graph.gates.model import GateInitWarning
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():  # the policy's gate start is applied, whatever it is
            warnings.simplefilter("error", GateInitWarning)
            record = cifar_methods.run_one(args, method, target, seed=0)
    finally:
        torch.set_num_threads(threads)
    for key in ("acc_gated", "acc_finalized", "acc_finetuned", "acc_val", "acc_heldout2", "flops_kept", "params_kept",
                "seconds"):
        assert key in record, key
    if method == "unpruned":
        assert record["flops_kept"] == pytest.approx(1.0)
    elif method == "magnitude":  # one shot to the budget: on target before any training
        assert abs(record["flops_kept"] - target) <= 0.01, record["flops_kept"]
    else:  # one gated step cannot reach the target, but finalize is exact and the record complete
        assert record["acc_gated"] == pytest.approx(record["acc_finalized"])
        assert record["finalize_max_rel_diff"] <= 1e-4 and record["steps"] and record["fix"] is not None


def test_the_run_command_keeps_a_second_held_out_split_when_asked(args, tmp_path):
    from benchmarks import records
    results = tmp_path / "runs.json"
    argv = ["run", "--data", args.data, "--methods", "magnitude", "--targets", "0.5", "--seeds", "0",
            "--checkpoint", args.checkpoint, "--train-subset", "12", "--val-subset", "4", "--sparse-epochs", "1",
            "--finetune-epochs", "1", "--results", str(results)]
    threads = torch.get_num_threads()
    try:
        cifar_methods.main([*argv, "--heldout2-subset", "4"])
        cifar_methods.main(argv)  # another setting: recorded beside it, without the split
    finally:
        torch.set_num_threads(threads)
    first, second = records.load_records(results)
    assert first["settings"]["heldout2_subset"] == 4 and "acc_heldout2" in first["result"]
    assert "heldout2_subset" not in second["settings"] and "acc_heldout2" not in second["result"]
