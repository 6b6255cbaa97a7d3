"""regularizer.lr_by_cost: each gate tensor's learning rate scaled by its units' cost share
(gdp_graph.gates.regularizers.unit_cost_scales, GatedModel.gate_optimizer)."""

from __future__ import annotations

import pytest
import torch

from tests.test_gate_window import _policy

class TwoStages(torch.nn.Module):
    """A channel at full resolution costs 4x one at half resolution: the cost shares differ."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c = torch.nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.d = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        x = torch.relu(self.d(torch.relu(self.c(x))))
        return self.fc(x.mean((2, 3)))


def _theta_drop(lr_by_cost: bool, steps: int = 5) -> dict[int, float]:
    import gdp_graph as G
    policy = _policy(lr_by_cost=lr_by_cost, init="uniform", hold_budget=False,
                     lambda_controller={"kind": "constant"}, fix_at=1.0)
    gated = G.attach(TwoStages(), policy, example_inputs=torch.randn(2, 3, 16, 16), total_steps=50)
    bank = gated.bank
    start = {g: bank.group_theta[str(g)].detach().clone() for g in bank.group_ids}
    opt = gated.gate_optimizer(lr=0.01)
    for _ in range(steps):  # the price alone: every gate goes down, at its tensor's rate
        opt.zero_grad()
        gated.penalty().backward()
        opt.step()
    return {g: float((start[g] - bank.group_theta[str(g)].detach()).mean()) for g in bank.group_ids}


def test_lr_by_cost_moves_the_expensive_units_gates_faster() -> None:
    plain, scaled = _theta_drop(False), _theta_drop(True)
    assert max(plain.values()) == pytest.approx(min(plain.values()), rel=1e-3)  # Adam: one pace for all
    assert max(scaled.values()) > 2.5 * min(scaled.values())  # 4x the cost per unit at full resolution


def test_unit_cost_scales_are_relative_to_the_mean_unit_and_bounded() -> None:
    from gdp_graph.gates.regularizers import COST_LR_BOUNDS, unit_cost_scales

    def reg(groups, blocks):  # unit costs 1 (group 0), 3 (group 1); a block worth 100 units
        return groups[0].sum() + 3 * groups[1].sum() + 100 * blocks[7]

    frozen = {0: torch.tensor([False, False, True]), 1: torch.tensor([False, False])}
    groups, blocks = unit_cost_scales(reg, {0: 3, 1: 2}, frozen, [7])
    assert groups == {0: pytest.approx(1.0), 1: pytest.approx(3.0)}  # relative to the cheapest group
    assert blocks == {7: COST_LR_BOUNDS[1]}
