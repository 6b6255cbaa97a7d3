"""CIFAR-10 ResNet-20 through ``gdp-graph prune``: this file is both the model SPEC and the TASK.

    GDP_GRAPH_CIFAR10=path/to/cifar-10-python.tar.gz \
    gdp-graph prune examples/cifar_resnet.py:model --task examples/cifar_resnet.py:task \
        --policy cifar_resnet --out runs/resnet20 --finetune-epochs 2

Environment: ``GDP_GRAPH_CIFAR10`` (the archive or its folder; else a checksummed download),
``CIFAR_SUBSET`` (images per split, for a quick run), ``CHECKPOINT`` (a pretrained state_dict,
e.g. from ``gdp-graph train --save-pretrained``; pruning an untrained network prunes noise).
"""

import os

import torch
import torch.nn.functional as F

from gdp_graph.recipes.cifar10.data import cifar10_loaders, load_cifar10
from gdp_graph.recipes.cifar10.models.cifar_resnet import resnet20
from gdp_graph.recipes.task import Task


def model():
    net = resnet20()
    if os.environ.get("CHECKPOINT"):
        net.load_state_dict(torch.load(os.environ["CHECKPOINT"], map_location="cpu", weights_only=True))
    return net, torch.randn(2, 3, 32, 32)


def task():
    subset = int(os.environ["CIFAR_SUBSET"]) if os.environ.get("CIFAR_SUBSET") else None
    data = load_cifar10(os.environ.get("GDP_GRAPH_CIFAR10"), subset=subset)
    train, test = cifar10_loaders(data, batch_size=128)
    return Task(train_loader=train, eval_loader=test,
                loss=lambda output, batch: F.cross_entropy(output, batch[1]),
                metric=lambda output, batch: (output.argmax(1) == batch[1]).float().mean().item(),
                epochs=10, lr=0.02, finetune_lr=0.01)
