"""What the CIFAR methods benchmark compares and on which images: its methods, its named
protocols and the splits of the CIFAR-10 training images, in file order:

``train``     images ``[0, train)``: every method trains on them (and scores one-shot importance);
``val``       the next ``val`` images: the held-out split that settings are chosen on
              (``acc_val``; the tuning stage picks by it and by nothing else);
``heldout2``  the next ``heldout2`` images: a second held-out split that no selection reads
              (``acc_heldout2``, reported beside the test set); 0 leaves it out.

The protocol's sizes are 10,000 / 2,000 / 2,000: images 0-9,999 train, 10,000-11,999 are
``acc_val``, 12,000-13,999 are ``acc_heldout2``. The 10,000 test images give the test accuracy.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["COMPETITORS", "FAIR_PROTOCOL", "Loaders", "METHODS", "ONE_SHOT", "PROTOCOLS", "QUICK", "SCORE_BATCHES",
           "TORCH_PRUNING", "loaders", "split_ranges"]

METHODS = ("gdp", "polarization", "polarization_bisect", "l1", "magnitude", "activation", "taylor", "tp_group_l1",
           "tp_bn_scale", "unpruned")
#: the one-shot methods scored by gdp_graph.importance
ONE_SHOT = ("magnitude", "activation", "taylor")
#: the one-shot methods of Torch-Pruning (benchmarks/tp_baseline.py)
TORCH_PRUNING = ("tp_group_l1", "tp_bn_scale")
#: batches of the training split that activation and taylor score on
SCORE_BATCHES = 16
#: methods that prune; ``unpruned`` is the reference every row is read against
COMPETITORS = METHODS[:-1]

#: named settings; ``cpu-short`` is the protocol of the tables in docs/benchmarks.md (the ``run``
#: command's own defaults are a longer schedule); ``heldout2_subset`` is the split no selection reads
PROTOCOLS = {"cpu-short": {"pretrain_epochs": 15, "sparse_epochs": 3, "finetune_epochs": 1, "lr": 0.02,
                           "finetune_lr": 0.01, "train_subset": 10000, "val_subset": 2000}}
#: the fair campaign's protocol (benchmarks/cifar_fair.py): cpu-short with the second held-out split
FAIR_PROTOCOL = {**PROTOCOLS["cpu-short"], "heldout2_subset": 2000}
#: ``--quick`` smoke settings (marked quick in every record; never tabled by default)
QUICK = {"pretrain_epochs": 1, "sparse_epochs": 1, "finetune_epochs": 1, "train_subset": 1000, "val_subset": 500,
         "heldout2_subset": 500}


class Loaders(NamedTuple):
    train: object
    val: object
    heldout2: object  # None when the split is left out
    test: object


def split_ranges(train: int, val: int, heldout2: int = 0) -> dict[str, range]:
    """The training-image indices of each split: consecutive, disjoint ranges in file order."""
    for name, size in (("train", train), ("val", val), ("heldout2", heldout2)):
        if size < 0 or (size == 0 and name != "heldout2"):
            raise ValueError(f"split {name!r} needs a positive size, got {size}")
    return {"train": range(0, train), "val": range(train, train + val),
            "heldout2": range(train + val, train + val + heldout2)}


def loaders(data_path: str, train: int, val: int, seed: int, heldout2: int = 0) -> Loaders:
    """Loaders over :func:`split_ranges`: the training split shuffled and augmented with
    ``seed``, the held-out splits and the full test set in fixed order without augmentation."""
    from gdp_graph.recipes.cifar10.data.cifar10 import cifar10_loaders, load_cifar10
    from gdp_graph.recipes.cifar10.data.dataset import Cifar10Data

    ranges = split_ranges(train, val, heldout2)
    full = load_cifar10(data_path, train_subset=ranges["heldout2"].stop, test_subset=None)
    have = full.train_labels.numel()
    if have < ranges["heldout2"].stop:
        raise ValueError(f"{data_path}: {have} training images, the splits need {ranges['heldout2'].stop}")

    def part(name: str) -> tuple:
        r = ranges[name]
        return full.train_images[r.start:r.stop], full.train_labels[r.start:r.stop]

    images, labels = part("train")
    train_loader, test_loader = cifar10_loaders(Cifar10Data(images, labels, full.test_images, full.test_labels,
                                                            full.source), batch_size=128, seed=seed)

    def held_out(name: str):
        images, labels = part(name)
        return cifar10_loaders(Cifar10Data(images, labels, images, labels, full.source), batch_size=128,
                               seed=seed)[1]

    return Loaders(train_loader, held_out("val"), held_out("heldout2") if heldout2 else None, test_loader)
