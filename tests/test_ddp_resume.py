"""Resuming mid-gate-phase under DDP (2 CPU processes, gloo): a run stopped before the cut and
resumed from rank 0's checkpoint (the gated model's state dict, the driver's state, the task
optimizer's) ends exactly as the run that never stopped, on both ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tests.test_ddp import POLICY, TinyRes, on_ranks

STEPS, STOP = 10, 2  # fix_at 0.3 of 10 steps: the cut comes after the resume


def _run(rank: int, start: int, stop: int, state: dict | None) -> dict:
    from gdp_graph.gates.attach import attach
    from gdp_graph.integrations.driver import GateDriver
    torch.manual_seed(0)
    gated = attach(TinyRes().train(), POLICY, example_inputs=torch.randn(2, 3, 8, 8), total_steps=STEPS,
                   init_gate=0.5)
    driver = GateDriver(gated)
    opt = torch.optim.SGD([p for p in gated.parameters() if all(p is not g for g in gated.gate_parameters())],
                          lr=0.1, momentum=0.9)
    if state is not None:
        gated.load_state_dict(state["gated"])
        driver.load_state_dict(state["driver"])
        opt.load_state_dict(state["opt"])
    ddp = DistributedDataParallel(gated)
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(1000 * step + rank)  # the data of this step on this rank
        x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        driver.before_optimizer_step()
        opt.step()
        driver.after_optimizer_step(step + 1)
    out = {"gated": gated.state_dict(), "driver": driver.state_dict(), "opt": opt.state_dict(),
           "fixed": bool(gated.fixed)}
    if stop == STEPS:
        driver.finalize()
        out["plan"] = driver.finalize_report.plan.to_dict()["keep"]
    return out


def _whole(rank: int) -> dict:
    return _run(rank, 0, STEPS, None)


def _first_part(rank: int) -> dict:
    return _run(rank, 0, STOP, None)


def _resumed(rank: int) -> dict:
    saved = torch.load(os.environ["GDP_TEST_CHECKPOINT"], weights_only=False)  # rank 0's, read by every rank
    return _run(rank, STOP, STEPS, saved)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_resuming_mid_gate_phase_under_ddp_ends_as_the_uninterrupted_run(tmp_path, monkeypatch) -> None:
    whole = on_ranks(_whole)
    first = on_ranks(_first_part)
    assert not first[0]["fixed"]  # stopped before the cut
    monkeypatch.setenv("GDP_TEST_CHECKPOINT", str(tmp_path / "ckpt.pt"))  # the spawned ranks inherit it
    torch.save(first[0], tmp_path / "ckpt.pt")
    resumed = on_ranks(_resumed)
    for rank in range(2):
        assert resumed[rank]["fixed"] and resumed[rank]["plan"] == whole[rank]["plan"] == whole[0]["plan"]
        a, b = resumed[rank]["gated"], whole[rank]["gated"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
