"""The gates' training rules: projection (no jump across 0, recovery, limits held), fixing the
gates at ``fix_at`` with a cut to the budget, and the budget measured on the finalized model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gdp_graph.gates.attach import attach
from gdp_graph.gates.finalize import finalize
from gdp_graph.gates.selection import plan_for_budget, plan_fraction
from gdp_graph.graph.cost import model_cost
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet

X = torch.randn(2, 3, 32, 32)


def gdp(target: float = 0.5, controller: str = "proportional", **reg) -> dict:
    # the uniform gate mechanics these tests pin down (ranked start and budget hold: test_gate_window)
    regularizer = {"name": "gdp", "lambda": 1.0, "epsilon": {"start": 1.0e-2, "end": 1.0e-8}, "fix_at": 0.5,
                   "lambda_controller": {"kind": controller}, "init": "uniform", "hold_budget": False, **reg}
    return {"version": 1, "target": {"fraction": target}, "regularizer": regularizer,
            "rules": [{"match": {"coupling": "residual"}, "max_fraction": 0.5}]}


def push_all_gates_down(gated, steps: int, lr: float = 5.0) -> None:
    """Plain SGD with a huge step on the penalty alone: the old failure mode (one step throws
    theta across 0)."""
    opt = torch.optim.SGD(gated.gate_parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (1000.0 * gated.penalty()).backward()
        opt.step()
        gated.step()


def test_bank_orders_gates_by_group_id_not_by_key_string() -> None:
    """ResNet-20 has 12 gated groups: the ParameterDict lists '10' before '2'; group 10's theta
    must drive group 10's gates."""
    gated = attach(cifar_resnet(20), gdp(), example_inputs=X, total_steps=10)
    assert len(gated.bank.group_ids) >= 11
    with torch.no_grad():
        gated.bank.group_theta["10"].zero_()
    gates = gated.group_gates()
    assert float(gates[10].detach().abs().max()) == 0.0
    assert all(float(gates[g].min()) > 0.9 for g in gates if g != 10)


def test_a_huge_step_cannot_throw_a_gate_across_zero_or_kill_it_before_fix() -> None:
    gated = attach(cifar_resnet(20), gdp(), example_inputs=X, total_steps=100)
    push_all_gates_down(gated, 3)
    theta = gated.bank._theta().detach()
    assert bool((theta > 0).all()) and bool((theta >= gated.bank.floor() * (1 - 1e-6)).all())
    assert int(gated.bank.dead.sum()) == 0 and not bool(gated.fixed)


def test_a_gate_at_its_floor_can_come_back() -> None:
    gated = attach(cifar_resnet(20), gdp(), example_inputs=X, total_steps=100)
    push_all_gates_down(gated, 2)
    before = gated.group_gates()[1].detach().clone()
    opt = gated.gate_optimizer(0.05)
    for _ in range(10):  # a task that wants group 1's channels open
        opt.zero_grad()
        (-gated.group_gates()[1].sum()).backward()
        opt.step()
        gated.step()
    after = gated.group_gates()[1].detach()
    low = before < 0.05  # the units the limits do not protect went down to their floor
    assert int(low.sum()) >= 8 and float(after[low].min()) > 0.5


def test_limits_hold_while_training_and_match_the_finalized_count() -> None:
    gated = attach(cifar_resnet(20), gdp(), example_inputs=X, total_steps=8)
    push_all_gates_down(gated, 3)
    gates = gated.group_gates()
    for gid, g in gates.items():
        group = gated.analysis.groups[gid]
        limit = gated.resolution.group_settings[gid].max_removable(group.size, divisor=group.divisor)
        assert int((g.detach() >= 0.9).sum()) >= group.size - limit, gid
    push_all_gates_down(gated, 1)  # step 4 of 8: fix_at 0.5
    assert bool(gated.fixed)
    dead = {gid: int((g == 0).sum()) for gid, g in gated.group_gates().items()}
    _, report = finalize(gated)
    assert {gid: n for gid, n in report.removed_units.items() if n} == {gid: n for gid, n in dead.items() if n}


@pytest.mark.parametrize("target", [0.5, 0.35])
def test_fixing_the_gates_lands_on_the_budget_measured_on_the_finalized_model(target: float) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(20)
    gated = attach(model, gdp(target), example_inputs=X, total_steps=10)
    with torch.no_grad():  # gates somewhere on their way: a spread of theta
        for p in gated.gate_parameters():
            p.uniform_(0.0, 1.0)
    for _ in range(5):
        gated.step()
    assert bool(gated.fixed) and gated.epsilon == 1e-8
    fixed = gated.bank.flat().detach().clone()
    with torch.no_grad():  # what an optimizer's momentum could still do to theta
        for p in gated.gate_parameters():
            p.add_(0.3)
    assert torch.equal(gated.bank.flat().detach(), fixed)
    penalty = gated.penalty()
    assert float(penalty) == 0.0 and penalty.requires_grad  # a driver may still backward() it
    pruned, report = finalize(gated)
    kept = model_cost(pruned, (X[:1],)).flops / model_cost(model, (X[:1],)).flops
    assert abs(kept - target) <= 0.01
    assert report.check.ok and sum(report.forced_units.values()) == 0


def test_constant_lambda_cuts_at_one_half() -> None:
    gated = attach(cifar_resnet(20), gdp(controller="constant"), example_inputs=X, total_steps=4)
    with torch.no_grad():
        gated.bank.group_theta["7"][:5] = 0.0  # gates 0: cut; the others stay
    gated.step()
    gated.step()
    assert bool(gated.fixed) and gated.fix_report["cut_units"] == 5


def test_budget_plan_respects_limits_and_lands_for_any_scores() -> None:
    gated = attach(cifar_resnet(20), gdp(), example_inputs=X, total_steps=10)
    analysis, resolution = gated.analysis, gated.resolution
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        scores = {gid: torch.rand(analysis.groups[gid].size, generator=g) for gid in gated.bank.group_ids}
        for target in (0.5, 0.35):
            plan, fraction = plan_for_budget(analysis, gated.cost_model, resolution, scores, target, normalize=True)
            assert abs(fraction - target) <= 0.01
            assert fraction == plan_fraction(gated.cost_model, plan, "flops")
            for gid, keep in plan.keep.items():
                group = analysis.groups[gid]
                limit = resolution.group_settings[gid].max_removable(group.size, divisor=group.divisor)
                assert group.size - len(keep) <= limit


def test_gates_train_by_adam_with_one_learning_rate() -> None:
    gated = attach(cifar_resnet(20), gdp(), example_inputs=X, total_steps=100)
    opt = gated.gate_optimizer(0.02)
    assert isinstance(opt, torch.optim.Adam) and {g["lr"] for g in opt.param_groups} == {0.02}
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    before = gated.bank._theta().detach().clone()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    opt.zero_grad()
    (F.cross_entropy(gated(x), y) + 100.0 * gated.penalty()).backward()
    opt.step()
    moved = (gated.bank._theta().detach() - before).abs()
    assert float(moved.max()) <= 0.02 * 1.001 and float(moved.max()) > 0.01  # ~lr, whatever the gradient


def test_training_gates_and_the_gated_reference_are_one_graph_pass() -> None:
    """Gates killed where a plan removes units reproduce verify's gated reference of that plan."""
    from gdp_graph.prune.verify import gated_reference

    torch.manual_seed(0)
    gated = attach(cifar_resnet(20).eval(), gdp(), example_inputs=X, total_steps=10)
    with torch.no_grad():
        for p in gated.gate_parameters():
            p.uniform_(0.0, 1.0)
    for _ in range(5):
        gated.step()
    plan = gated.current_plan(gated.threshold)
    assert plan.keep
    with torch.no_grad():  # the kept gates open fully: the reference multiplies them by 1
        gated.bank.set_epsilon(1e-30)
    reference = gated_reference(gated.analysis, plan).eval()
    gated.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gated(x), reference(x), rtol=1e-5, atol=1e-5)
