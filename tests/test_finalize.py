"""Finalizing: the pruned model reproduces the gated model (gates absorbed, units and blocks
removed), the plan honours the policy's limits, and the gated model is left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gdp_graph.gates.attach import attach
from gdp_graph.gates.finalize import FinalizeError, absorb, finalize, plan_from_gates
from gdp_graph.gates.model import GatedModel
from gdp_graph.graph.cost import model_cost
from gdp_graph.prune.verify import compare_outputs
from tests.zoo import ZOO


POLICY = {"version": 1, "regularizer": {"name": "gdp", "lambda": 0.01, "lambda_controller": {"kind": "constant"},
                                       "init": "uniform", "hold_budget": False},  # every gate starts at 0.99
          "defaults": {"block_level": "block"}}


def scramble(gated: GatedModel, seed: int = 1, zero: float = 0.4) -> None:
    """Simulate training: perturb every weight, give the gates random values in (0, 1) with a
    share exactly 0, and switch every other block off (the others at 0.7)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gated.module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for theta in gated.bank.group_theta.values():
            theta.copy_(torch.rand(theta.shape, generator=gen) * 3)
            theta[torch.rand(theta.shape, generator=gen) < zero] = 0.0
        for i, theta in enumerate(gated.bank.block_theta.values()):
            theta.fill_(0.0 if i % 2 == 0 else 0.7)


def fresh_like(inputs):
    gen = torch.Generator().manual_seed(7)
    return tuple(torch.randn(x.shape, generator=gen) if x.is_floating_point()
                 else torch.randint(0, int(x.max()) + 1, x.shape, generator=gen) for x in inputs)


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv2", "vit", "densenet", "shufflenetv2", "convnext",
                                  "inception", "embedding_lm"])
def test_finalized_equals_gated(name: str) -> None:
    model, x = ZOO[name]()
    gated = attach(model, POLICY, example_inputs=x)
    scramble(gated)
    pruned, report = finalize(gated)
    assert report.check.max_rel_diff <= 1e-5
    assert sum(report.removed_units.values()) > 0
    assert report.after.params < report.before.params and report.after.flops < report.before.flops
    assert report.before == model_cost(gated.analysis.traced.gm, x)  # the per-node sum is the whole count
    assert report.after == model_cost(pruned, x)  # counted during the comparison run
    gates = {b: g.detach() for b, g in gated.block_gates().items()}
    assert report.plan.removed_blocks == {b for b, g in gates.items() if float(g) == 0.0}
    # and on other data, in eval mode
    data = fresh_like(x)
    _, other = finalize(gated, inputs=data)  # compared on other data, still counted on the examples
    assert other.after == report.after and other.check.ok
    gated.eval()
    with torch.no_grad():
        check = compare_outputs(gated(*data), pruned(*data), 1e-5)
    assert check.ok, check


def test_removed_blocks_keep_the_trained_constant() -> None:
    model, x = ZOO["resnet_basic"]()
    gated = attach(model, POLICY, example_inputs=x)
    scramble(gated)
    with torch.no_grad():  # a branch constant that only the trained weights know
        for name, m in gated.module.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.add_(0.5)
    pruned, report = finalize(gated)
    assert report.plan.removed_blocks and report.check.max_rel_diff <= 1e-5
    constants = [b for n, b in pruned.named_buffers() if n.startswith("_gdp_constant")]
    assert constants and all(bool((c != 0).any()) for c in constants)


def test_finalize_leaves_the_gated_model_alone() -> None:
    model, x = ZOO["resnet_basic"]()
    gated = attach(model, POLICY, example_inputs=x).train()
    scramble(gated)
    before = copy.deepcopy(gated.state_dict())
    pruned, report = finalize(gated)
    assert gated.training and pruned.training
    after = gated.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if isinstance(before[k], torch.Tensor))
    # the pruned model is built on finalize's own copy of the weights: nothing is shared
    assert not {t.data_ptr() for t in gated.state_dict().values() if isinstance(t, torch.Tensor)} \
        & {t.data_ptr() for t in pruned.state_dict().values()}
    summary = report.to_dict()
    assert summary["equal"] and summary["removed_units"] > 0 and summary["kept_scales"] == 0


class Shared(nn.Module):
    """``mid`` is called twice: its gates cannot be folded into one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.mid(torch.relu(self.mid(h))))
        return self.head(h.mean((2, 3)))


class Functional(nn.Module):
    """Gates land on a matmul with a parameter and on F.linear: both weights absorb them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.w2 = nn.Parameter(torch.randn(16, 12) / 4)
        self.w3 = nn.Parameter(torch.randn(5, 12) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        h = torch.relu(h @ self.w2)
        return F.linear(h, self.w3)


@pytest.mark.parametrize("cls, shape, scales", [(Shared, (2, 3, 8, 8), 2), (Functional, (2, 6), 0)])
def test_absorbed_or_kept_as_scales(cls, shape, scales: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape)
    gated = attach(cls(), POLICY, example_inputs=x)
    scramble(gated, zero=0.3)
    plan = plan_from_gates(gated.analysis, gated.bank, gated.resolution, gated.threshold)
    weights, site_scales = absorb(gated, plan)
    assert len(site_scales) == scales
    pruned, report = finalize(gated)
    assert report.kept_scales == scales and report.check.max_rel_diff <= 1e-5
    assert sum(report.removed_units.values()) > 0


def test_limits_keep_the_largest_gates() -> None:
    model, x = ZOO["vgg"]()
    policy = copy.deepcopy(POLICY)
    policy["defaults"].update(min_channels=3, round_to=4, max_fraction=0.5)
    gated = attach(model, policy, example_inputs=x)
    with torch.no_grad():
        for theta in gated.bank.group_theta.values():
            n = theta.numel()
            theta.copy_(torch.linspace(1.0, 2.0, n))
            theta[: (3 * n) // 4] = torch.linspace(0.0, 1e-5, (3 * n) // 4)  # 3/4 of the gates <= threshold
    plan = plan_from_gates(gated.analysis, gated.bank, gated.resolution, gated.threshold)
    gates = {gid: g.detach() for gid, g in gated.group_gates().items()}
    assert plan.keep
    for gid, kept in plan.keep.items():
        size = gated.analysis.groups[gid].size
        assert len(kept) >= max(3, size // 2) and len(kept) % 4 == 0
        removed = sorted(set(range(size)) - set(kept))
        forced = [u for u in kept if float(gates[gid][u]) <= gated.threshold]
        assert forced  # the limits kept some switched-off units ...
        assert max(float(gates[gid][u]) for u in removed) <= min(float(gates[gid][u]) for u in forced)  # the largest
    pruned, report = finalize(gated)  # ... and they are absorbed with their tiny gates
    assert report.check.max_rel_diff <= 1e-5 and sum(report.forced_units.values()) > 0


def test_raises_when_outputs_differ() -> None:
    model, x = ZOO["resnet_basic"]()
    gated = attach(model, POLICY, example_inputs=x)
    with torch.no_grad():  # below the threshold, but not zero: removal changes outputs a little
        theta = next(iter(gated.bank.group_theta.values()))
        theta[:3] = 1e-4
    with pytest.raises(FinalizeError, match="does not reproduce"):
        finalize(gated, threshold=0.5, tolerance=1e-12)
    pruned, report = finalize(gated, threshold=0.5)
    assert 0 < report.check.max_rel_diff <= 1e-4
