"""The default policy's gates decide before they are cut (issue 17): the README quick start's
model (examples/own_model.py) pruned by ``run_prune`` as ``gdp-graph prune --policy default``
runs it, with a gate snapshot after every step (the history ``prune`` writes to report.json and
draws in gates.png / trajectory.png).

Before the default started its gates ranked by magnitude and held the budget, every gate sat at
0.98-1.0 until the cut dropped the kept FLOPs from 1.0 to 0.5 in one step; these assertions fail
for that (``regularizer.init: uniform, hold_budget: false``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from gdp_graph.policy import Policy, policy_from_dict
from gdp_graph.recipes.driver import Schedule, run_prune

ROOT = Path(__file__).resolve().parents[1]


def _own_model():
    spec = importlib.util.spec_from_file_location("own_model", ROOT / "examples" / "own_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _history(epochs: int, **regularizer):
    own = _own_model()
    torch.manual_seed(0)
    model, example = own.model()
    task = own.task()
    data = Policy.default().to_dict()
    data["regularizer"].update(regularizer)
    policy = policy_from_dict(data)
    steps_per_epoch = len(task.train_loader)
    schedule = Schedule(epochs=epochs, lr=task.lr, snapshots_per_epoch=steps_per_epoch, evaluate_original=False)
    return run_prune(model, (example,), task, policy, schedule, torch.device("cpu")).history, policy


@pytest.mark.parametrize("epochs", [4, 14])  # 14 and 50 gate steps before the cut (fix_at 0.3)
def test_the_default_polarizes_the_gates_before_the_cut(epochs):
    history, policy = _history(epochs)
    cut = next(i for i, zeros in enumerate(history.zero_gates) if zeros)  # the first snapshot after the cut
    before = cut - 1
    assert history.step[before] == history.step[cut] - 1  # a snapshot every step
    gates = torch.tensor(history.gates[before])
    target = policy.target.fraction
    hard, soft = history.hard_fraction[before], history.soft_fraction[before]
    assert float(((gates > 0.05) & (gates < 0.95)).float().mean()) <= 0.1  # polarized
    assert abs(hard - soft) <= 0.03  # the gates' values say what the hard count keeps
    assert abs(soft - target) <= 0.05  # the gates, not the cut, went to the budget
    assert abs(history.hard_fraction[cut] - hard) <= 0.03  # the cut only confirms them
    changed = ((gates > 0.5) != (torch.tensor(history.gates[cut]) > 0)).sum()
    assert int(changed) <= 2
    # and they moved during the window, not only at its end
    middle = history.step.index(history.step[cut] // 2)
    assert history.soft_fraction[middle] <= 0.8
