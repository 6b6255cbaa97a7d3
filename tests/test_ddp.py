"""Gates under DistributedDataParallel: two CPU processes (gloo), different data per rank.

Gates are ordinary parameters, so DDP averages their gradients; epsilon, the step counters and
lambda move identically on every rank. Both ranks must end with the same gates, the same lambda
and the same pruned model.
"""

from __future__ import annotations

import gc
import os
import tempfile
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

WORLD = 2
STEPS = 4
POLICY = {"version": 1, "defaults": {"block_level": "block"}, "target": {"fraction": 0.05},
          "regularizer": {"name": "gdp", "lambda": 0.05,
                          "lambda_controller": {"kind": "proportional", "gain": 0.5, "min": 0.0, "max": 1.0},
                          "epsilon": {"start": 0.1, "end": 1.0e-4},
                          # lambda must move in 4 steps: no budget hold (it holds lambda at a hard fraction in band)
                          "init": "uniform", "hold_budget": False}}


class TinyRes(nn.Module):
    """No BatchNorm: its running statistics would differ per rank (that needs SyncBatchNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def on_ranks(train: Callable[[int], dict]) -> list[dict]:
    """``train(rank)`` (a module-level function) in WORLD CPU processes joined by gloo; what each
    rank returned."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(train, os.path.join(tmp, "store"), tmp), nprocs=WORLD, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]


def _rank(rank: int, train: Callable[[int], dict], store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        result = train(rank)
        # DDP's reducer sits in reference cycles; freed after the group is destroyed, its gloo
        # threads abort the process ("terminate called without an active exception").
        gc.collect()
        dist.barrier()
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _train(rank: int) -> dict:
    from gdp_graph.gates.attach import attach
    from gdp_graph.gates.finalize import finalize
    from tests.fixtures.gated_steps import train_steps

    torch.manual_seed(0)  # the same model and gates on both ranks
    gated = attach(TinyRes().train(), POLICY, example_inputs=torch.randn(2, 3, 8, 8), total_steps=STEPS,
                   init_gate=0.5)
    with torch.no_grad():  # something to prune: some gates already at 0, block 0 off
        for theta in gated.bank.group_theta.values():
            theta[::3] = 0.0
        gated.bank.block_theta["0"].zero_()
    ddp = DistributedDataParallel(gated)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(100 + rank)  # different data per rank
    batches = ((torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen))
               for _ in range(STEPS))
    losses = train_steps(gated, opt, batches, forward=ddp)
    assert bool(gated.fixed)  # fix_at 0.3 of 4 steps: the gates were cut and fixed
    pruned, report = finalize(gated)
    return {"gates": {k: v.detach() for k, v in gated.group_gates().items()},
            "blocks": {k: v.detach() for k, v in gated.block_gates().items()},
            "lambda": gated.lam, "epsilon": gated.epsilon, "losses": losses,
            "pruned": pruned.state_dict(), "report": report.to_dict()}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_two_ranks_end_identical() -> None:
    a, b = on_ranks(_train)
    assert a["losses"] != b["losses"]  # the ranks did see different data ...
    for key in ("gates", "blocks"):  # ... and still agree on every gate
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert a["lambda"] == b["lambda"] != 0.05 and a["epsilon"] == b["epsilon"] == 1e-4
    assert a["pruned"].keys() == b["pruned"].keys()
    assert all(torch.equal(a["pruned"][k], b["pruned"][k]) for k in a["pruned"])
    assert a["report"]["equal"] and a["report"]["removed_units"] > 0 and a["report"]["removed_blocks"] == [0]
    assert a["report"]["params_after"] < a["report"]["params_before"]


def _diverged(rank: int) -> dict:
    from gdp_graph.gates.attach import attach
    from gdp_graph.gates.bank import GateError
    from gdp_graph.integrations.driver import GateDriver

    torch.manual_seed(0)
    gated = attach(TinyRes().train(), POLICY, example_inputs=torch.randn(2, 3, 8, 8), total_steps=STEPS,
                   init_gate=0.5)
    with torch.no_grad():  # gates that drifted apart: rank 1 closes a third of every group's units
        for theta in gated.bank.group_theta.values():
            theta[::3] = 0.0 if rank == 1 else 1.0
    try:
        GateDriver(gated).finalize()
    except GateError as error:
        return {"error": str(error)}
    return {"error": ""}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ranks_that_reach_different_plans_are_refused_on_every_rank() -> None:
    a, b = on_ranks(_diverged)
    assert "ranks [1] reached another plan than rank 0" in a["error"] == b["error"]
