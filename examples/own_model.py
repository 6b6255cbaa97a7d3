"""Your own model in 30 lines: a SPEC and a TASK in one file, pruned from a policy.

    gdp-graph prune examples/own_model.py:model --task examples/own_model.py:task \
        --policy default --target 0.5 --out runs/own
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gdp_graph.recipes.task import Task


def model():  # any nn.Module; return it with example inputs
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))
    return net, torch.randn(2, 3, 16, 16)


def task():  # your data: here a synthetic task (is channel 0 brighter than channel 1?)
    x = torch.randn(512, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()
    train, test = TensorDataset(x[:384], y[:384]), TensorDataset(x[384:], y[384:])
    return Task(train_loader=DataLoader(train, batch_size=32, shuffle=True),
                eval_loader=DataLoader(test, batch_size=128),
                loss=lambda output, batch: F.cross_entropy(output, batch[1]),
                metric=lambda output, batch: (output.argmax(1) == batch[1]).float().mean().item(),
                epochs=4, lr=0.05)
