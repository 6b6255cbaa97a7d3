"""Gates that decide within a short window: a ranked start (regularizer.init), epsilon reaching
its end before the cut (epsilon.end_at) and a lambda controller aimed at that step
(lambda_controller.deadline)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gdp_graph as G
from gdp_graph.gates.bank import GateError
from gdp_graph.gates.budget import BudgetController
from gdp_graph.gates.init import init_from_scores
from gdp_graph.gates.regularizers import free_gate_vector
from gdp_graph.policy import Policy, policy_from_dict


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _policy(**regularizer):
    data = Policy.default().to_dict()
    for key, value in regularizer.items():
        node = data["regularizer"]
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return policy_from_dict(data)


def test_a_ranked_start_orders_theta_as_the_scores_and_spans_the_spread():
    torch.manual_seed(0)
    gated = G.attach(Net(), _policy(), example_inputs=torch.randn(2, 3, 8, 8), total_steps=20)
    bank = gated.bank
    scores = {gid: torch.randn(len(bank.group_theta[str(gid)])) for gid in bank.group_ids}
    init_from_scores(gated, scores, spread=0.9)
    groups, _ = bank.split(torch.cat([bank._theta().detach(), bank.one]))
    everything = torch.cat([scores[g] / scores[g].abs().mean() for g in bank.group_ids])
    thetas = torch.cat([groups[g] for g in bank.group_ids])
    assert torch.equal(torch.argsort(thetas, stable=True), torch.argsort(everything, stable=True))
    assert float(thetas.min()) == pytest.approx(0.1 * bank.theta_start)
    assert float(thetas.max()) == pytest.approx(bank.theta_start)


def test_a_global_ranked_start_compares_raw_scores_across_groups():
    # one group scores ten times the other: ranked per group both start alike, ranked globally
    # every unit of the low group starts below every unit of the high one
    gated = G.attach(Net(), _policy(), example_inputs=torch.randn(2, 3, 8, 8), total_steps=20)
    bank = gated.bank
    low, high = bank.group_ids[:2]
    base = torch.linspace(1.0, 2.0, len(bank.group_theta[str(low)]))
    scores = {low: base.clone(), high: 10 * base}
    for per_group in (True, False):
        init_from_scores(gated, scores, spread=0.9, per_group=per_group)
        groups, _ = bank.split(torch.cat([bank._theta().detach(), bank.one]))
        if per_group:
            assert float(groups[low].max()) > float(groups[high].min())  # interleaved
        else:
            assert float(groups[low].max()) < float(groups[high].min())


def test_init_rank_is_a_gdp_policy_key():
    assert _policy(init_rank="global").regularizer.init_rank == "global"
    assert Policy.default().regularizer.init_rank == "group"
    data = Policy.default().to_dict()
    data["regularizer"]["init_rank"] = "layer"
    with pytest.raises(Exception, match="init_rank"):
        policy_from_dict(data)


def test_price_is_a_gdp_policy_key_the_gated_model_uses():
    assert Policy.default().regularizer.price == "cost"
    data = Policy.default().to_dict()
    data["regularizer"]["price"] = "flops"
    with pytest.raises(Exception, match="price"):
        policy_from_dict(data)
    data["regularizer"].update(name="polarization", price="units")
    with pytest.raises(Exception, match="price"):
        policy_from_dict(data)
    example = torch.randn(2, 3, 8, 8)
    gated = G.attach(Net(), _policy(price="units", init="uniform"), example_inputs=example, total_steps=20)
    groups, blocks = gated.bank.values()
    free = free_gate_vector(gated.cost_model, groups, blocks)
    assert float(gated.regularizer(groups, blocks)) == pytest.approx(float(free.mean()))
    by_cost = G.attach(Net(), _policy(init="uniform"), example_inputs=example, total_steps=20).regularizer
    assert float(by_cost(groups, blocks)) != pytest.approx(float(free.mean()))


def test_a_ranked_start_is_refused_once_training_started():
    gated = G.attach(Net(), _policy(), example_inputs=torch.randn(2, 3, 8, 8), total_steps=20)
    gated.step()
    with pytest.raises(GateError, match="before the gated phase"):
        init_from_scores(gated, {}, spread=0.9)


def test_the_deadline_cuts_the_look_ahead_so_lambda_moves_after_a_collapse():
    """After a fast fall the smoothed slope predicts the target far ahead: without a deadline
    lambda holds while the fraction drifts back up; with one it moves again once the deadline
    is near."""
    fractions = [0.95, 0.9, 0.6, 0.45, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7]
    plain, aimed = BudgetController(0.5, lambda_init=1.0, gain=0.1), BudgetController(0.5, lambda_init=1.0, gain=0.1,
                                                                                      deadline=6)
    for step, f in enumerate(fractions, start=1):
        plain.update(step, f, f)
        aimed.update(step, f, f)
    assert plain.lam == pytest.approx(plain.history[3]["lambda"])  # held since the collapse
    assert aimed.lam > 1.2 * aimed.history[3]["lambda"]
    assert aimed.horizon_at(4) == 2 and aimed.horizon_at(9) == 0 and plain.horizon_at(9) == plain.horizon


def test_deadline_policy_aims_the_controller_at_epsilons_end_and_sizes_the_gain():
    policy = _policy(fix_at=0.5, epsilon__end_at=0.8, lambda_controller__deadline=True)
    gated = G.attach(Net(), policy, example_inputs=torch.randn(2, 3, 8, 8), total_steps=50)
    assert gated.fix_step == 25 and gated.epsilon_schedule.total_steps == 20
    assert gated.controller.deadline == 20 and gated.controller.gain == pytest.approx(2.302585 / 20, rel=1e-5)
    state = gated.controller.state_dict()
    state.pop("deadline")  # a controller saved before deadlines existed still loads
    gated.controller.load_state_dict(state)
    assert gated.controller.deadline is None


def _train_window(policy, steps: int = 40, seed: int = 0):
    """Train ``Net`` with gates on a fixed synthetic task until the cut; returns the gated model,
    the hard fraction (gates <= 0.5 removed) after every step before the cut and the free gates
    after the last one."""
    torch.manual_seed(seed)
    x = torch.randn(64, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long() + 2 * (x[:, 2].mean((1, 2)) > 0).long()
    gated = G.attach(Net(), policy, example_inputs=x[:2], total_steps=steps)
    weights = [p for p in gated.parameters() if all(p is not q for q in gated.gate_parameters())]
    opt, gate_opt = torch.optim.SGD(weights, lr=0.05, momentum=0.9), gated.gate_optimizer()
    hard, last = [], None
    while not bool(gated.fixed):
        i = torch.randint(0, 64, (16,))
        loss = torch.nn.functional.cross_entropy(gated(x[i]), y[i]) + gated.penalty()
        opt.zero_grad(), gate_opt.zero_grad()
        loss.backward()
        opt.step(), gate_opt.step()
        gated.step()
        if not bool(gated.fixed):
            hard.append(gated.fractions()[0])
            last = torch.cat([g[~gated.analysis.groups[gid].frozen_units] for gid, g in gated.group_gates().items()])
    return gated, hard, last.detach()


def test_holding_the_budget_polarizes_the_gates_at_the_target_before_the_cut():
    """A 20-step gate window: with hold_budget the gates never fall below the target, reach it
    before the cut, are polarized (< 0.05 or > 0.95) then, and the cut changes few units."""
    policy = _policy(fix_at=0.5, hold_budget=True, lambda_controller__gain=0.2,
                     epsilon__max_travel=0.75, epsilon__end_at=0.8)
    gated, hard, last = _train_window(policy)
    target, tol = policy.target.fraction, policy.target.tolerance
    assert min(hard) >= target - tol - 0.05  # no collapse below the budget
    assert abs(hard[-1] - target) <= tol + 0.05  # at the target before the cut
    assert float(((last < 0.05) | (last > 0.95)).float().mean()) >= 0.9
    cut = torch.cat([g[~gated.analysis.groups[gid].frozen_units] for gid, g in gated.group_gates().items()]) == 0
    assert int(((last <= 0.5) != cut).sum()) <= 2  # the cut confirms the gates


def test_a_large_drop_of_epsilon_keeps_the_carried_gates_values():
    """hold_budget carries the gates outside the budget through epsilon's annealing (theta scaled
    with sqrt(epsilon)): one step from 5e-3 to 1e-8 (a 3-step window) must not take them for
    gates at the floor and close them (the cause of a 2-step LLM window losing every block)."""
    from gdp_graph.gates.bank import GateBank
    bank = GateBank({0: torch.zeros(4, dtype=torch.bool)}, [7], epsilon=5e-3, init_gate=0.99)
    with torch.no_grad():
        bank.group_theta["0"].copy_(torch.tensor([0.7, 0.07, bank.floor(), 0.05]))
    before = bank.flat()[:5].detach().clone()
    carry = torch.tensor([True, True, True, False, True])
    bank.set_epsilon(1e-8, carry)
    after = bank.flat()[:5].detach()
    assert torch.allclose(after[:3], before[:3], rtol=1e-4) and float(after[4]) == pytest.approx(0.99, abs=1e-4)
    assert float(after[3]) == pytest.approx(1.0, abs=1e-4)  # not carried: annealing opens it, as before
    bank.set_epsilon(1e-8 * 0.5)  # without carry a gate at the floor stays there
    assert float(bank.flat()[2].detach()) == pytest.approx(0.0099, abs=1e-4)


def test_a_constant_lambda_holds_no_budget():
    """hold_budget (on by default) belongs to a steered lambda: with a constant one the price
    alone decides, so a large price takes the gates below the target before the cut."""
    data = Policy.default().to_dict()
    data["regularizer"].update(lambda_controller={"kind": "constant"}, **{"lambda": 50.0}, fix_at=1.0)
    gated = G.attach(Net(), policy_from_dict(data), example_inputs=torch.randn(2, 3, 8, 8), total_steps=60)
    assert gated.policy.regularizer.hold_budget and gated.controller is None
    opt = gated.gate_optimizer(lr=0.05)
    for _ in range(59):
        opt.zero_grad()
        gated.penalty().backward()
        opt.step()
        gated.step()
    assert gated.fractions()[0] < gated.policy.target.fraction - 0.1
