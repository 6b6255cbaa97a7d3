"""FSDP2 on CPU (gloo, 2 processes): the weights sharded by ``fully_shard``, the gates replicated
(integrations.fsdp.shard_weights), their gradients averaged by the driver; both ranks end with
the same gates, lambda, plan and pruned weights."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from tests.test_ddp import POLICY, STEPS, WORLD, TinyRes, on_ranks

fsdp = pytest.importorskip("torch.distributed.fsdp")
pytestmark = pytest.mark.skipif(not hasattr(fsdp, "fully_shard") or not dist.is_available(),
                                reason="FSDP2 (fully_shard) is not in this torch")


def _train(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    from gdp_graph.gates.attach import attach
    from gdp_graph.integrations.driver import GateDriver
    from gdp_graph.integrations.fsdp import is_sharded, shard_weights
    torch.manual_seed(0)
    gated = attach(TinyRes().train(), POLICY, example_inputs=torch.randn(2, 3, 8, 8), total_steps=STEPS,
                   init_gate=0.5)
    gates = set(gated.gate_parameters())
    shard_weights(gated, mesh=init_device_mesh("cpu", (WORLD,)))
    sharded = is_sharded(gated)
    driver = GateDriver(gated, reduce_gate_grads=True)
    opt = torch.optim.SGD([p for p in gated.parameters() if p not in gates], lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)  # different data per rank
    losses = []
    for step in range(STEPS):
        x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        loss = F.cross_entropy(gated(x), y)
        loss.backward()
        driver.before_optimizer_step()
        opt.step()
        driver.after_optimizer_step(step + 1)
        losses.append(loss.item())
    pruned = driver.finalize()
    return {"sharded": sharded, "gates_replicated": all(type(p) is torch.nn.Parameter for p in gates),
            "theta": [p.detach().clone() for p in gated.gate_parameters()], "lambda": gated.lam,
            "fixed": bool(gated.fixed), "losses": losses, "plan": driver.finalize_report.plan.to_dict(),
            "equal": driver.finalize_report.check.ok, "pruned": pruned.state_dict()}


def test_fsdp2_weights_sharded_gates_replicated_two_ranks_end_identical() -> None:
    a, b = on_ranks(_train)
    assert a["sharded"] and a["gates_replicated"]  # the weights were DTensors, the gates plain
    assert a["losses"] != b["losses"]
    assert all(torch.equal(x, y) for x, y in zip(a["theta"], b["theta"]))
    assert a["lambda"] == b["lambda"] != 0.05 and a["fixed"] and b["fixed"]
    assert a["plan"] == b["plan"] and a["plan"]["keep"] and a["equal"]
    assert all(torch.equal(a["pruned"][k], b["pruned"][k]) for k in a["pruned"])
