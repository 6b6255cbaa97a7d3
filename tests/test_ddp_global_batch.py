"""The same global batch on 2 DDP ranks (gloo, CPU) and on one process gives the same gates,
lambda and plan (within floating-point tolerance): DDP averages the per-rank mean gradients,
which is the mean over the whole batch, and the driver adds the same penalty on every rank."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tests.test_ddp import POLICY, WORLD, TinyRes, on_ranks

STEPS = 6
PER_RANK = 8


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(WORLD * PER_RANK, 3, 8, 8, generator=gen), torch.randint(0, 4, (WORLD * PER_RANK,), generator=gen))
            for _ in range(STEPS)]


def _train(rank: int, world: int) -> dict:
    from gdp_graph.gates.attach import attach
    from gdp_graph.integrations.driver import GateDriver
    torch.manual_seed(0)
    gated = attach(TinyRes().train(), POLICY, example_inputs=torch.randn(2, 3, 8, 8), total_steps=STEPS,
                   init_gate=0.5)
    model = DistributedDataParallel(gated) if world > 1 else gated
    driver = GateDriver(gated)
    opt = torch.optim.SGD([p for p in gated.parameters() if all(p is not g for g in gated.gate_parameters())], lr=0.1)
    for step, (x, y) in enumerate(_batches()):
        if world > 1:  # this rank's half of the global batch
            x, y = x[rank * PER_RANK:(rank + 1) * PER_RANK], y[rank * PER_RANK:(rank + 1) * PER_RANK]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        driver.before_optimizer_step()
        opt.step()
        driver.after_optimizer_step(step + 1)
    driver.finalize()
    return {"theta": [p.detach().clone() for p in gated.gate_parameters()], "lambda": gated.lam,
            "plan": driver.finalize_report.plan.to_dict()["keep"], "blocks": sorted(driver.finalize_report.plan.removed_blocks)}


def _train_ddp(rank: int) -> dict:
    return _train(rank, WORLD)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_and_one_process_on_the_same_global_batch_reach_the_same_plan() -> None:
    ranks = on_ranks(_train_ddp)
    single = _train(0, 1)
    assert single["plan"] and ranks[0]["plan"] == ranks[1]["plan"] == single["plan"]
    assert ranks[0]["blocks"] == single["blocks"]
    for a, b in zip(ranks[0]["theta"], single["theta"]):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), (a - b).abs().max()
    assert ranks[0]["lambda"] == pytest.approx(single["lambda"], rel=1e-5)
