"""lambda_controller.kind: lagrangian: lambda as the multiplier of "soft cost = a path to the
target" (gdp_graph.gates.lagrangian), and its wiring through the policy and the gated model."""

from __future__ import annotations

import math

import pytest
import torch

from gdp_graph.gates.lagrangian import RAMP_SHARE, TRACKING_GAP, LagrangianController
from gdp_graph.policy import PolicyError, policy_from_dict
from tests.test_gate_window import _policy, _train_window


def test_the_path_falls_linearly_from_the_first_soft_cost_to_the_target_by_the_ramp() -> None:
    ctrl = LagrangianController(0.5, deadline=20)
    assert ctrl.ramp == round(RAMP_SHARE * 20) == 15
    assert ctrl.path(0) == 0.5  # no update yet: the target
    ctrl.update(0, 0.9, 0.8)
    assert ctrl.path(0) == pytest.approx(0.8)
    assert ctrl.path(6) == pytest.approx(0.8 - 0.3 * 6 / 15)
    assert ctrl.path(15) == ctrl.path(40) == pytest.approx(0.5)


def test_without_a_deadline_the_path_is_the_target_and_the_rate_is_the_gain() -> None:
    ctrl = LagrangianController(0.5, gain=0.3, lambda_init=1.0)
    ctrl.update(0, 0.9, 0.8)
    assert ctrl.path(0) == 0.5 and ctrl.rate == 0.3
    assert ctrl.lambda1 == pytest.approx(1.0 + 0.3 * 0.3)
    assert ctrl.lambda2 == pytest.approx(0.3 * 0.09)
    assert ctrl.lam == pytest.approx(ctrl.lambda1 + 2 * ctrl.lambda2 * 0.3)


def test_the_rate_is_sized_to_the_deadline() -> None:
    """A gap of TRACKING_GAP held over the deadline raises lambda1 by lambda_init."""
    ctrl = LagrangianController(0.5, lambda_init=2.0, deadline=40)
    assert ctrl.rate == pytest.approx(2.0 / (TRACKING_GAP * 40))
    assert LagrangianController(0.5, lambda_init=2.0, gain=1e3, deadline=40).rate == 1e3


def test_above_the_path_lambda_rises_below_it_it_falls_to_min_within_the_bounds() -> None:
    ctrl = LagrangianController(0.5, gain=5.0, lambda_init=1.0, lambda_min=0.01, lambda_max=3.0)
    rising = [ctrl.update(i, 0.8, 0.8) for i in range(3)]
    assert rising == sorted(rising) and rising[-1] == 3.0  # bounded by max
    falling = [ctrl.update(3 + i, 0.2, 0.2) for i in range(20)]
    assert all(b <= a for a, b in zip(falling, falling[1:]))
    assert falling[-1] == ctrl.lambda1 == 0.01  # an inequality's multiplier: never below min


def test_the_gap_is_the_soft_fractions_and_reached_the_hard_ones() -> None:
    ctrl = LagrangianController(0.5, gain=1.0, lambda_init=1.0)
    ctrl.update(0, 0.5, 0.7)  # hard at the target, soft above: still pushing
    assert ctrl.lam > 1.0 and ctrl.reached
    assert ctrl.history[-1]["soft_fraction"] == 0.7 and ctrl.history[-1]["path"] == 0.5


def test_on_a_lagging_plant_with_the_budget_held_the_soft_cost_lands_by_the_deadline() -> None:
    """A plant whose cost falls at a speed set by lambda (only a price above 2 prunes, as a gate's
    task gradient resists), three updates late, and never below the target (hold_budget keeps
    what the cut would keep): the multiplier finds the price without being told it and the soft
    cost is at the target from the deadline on."""
    deadline, target = 40, 0.4
    ctrl = LagrangianController(target, lambda_init=0.5, deadline=deadline)
    soft, pushes = 1.0, []
    for step in range(deadline + 10):
        pushes.append(ctrl.update(step, soft, soft))
        applied = pushes[max(0, step - 3)]
        soft = min(1.0, max(target, soft - 0.02 * (applied - 2.0)))
    tail = [h["soft_fraction"] for h in ctrl.history[deadline:]]
    assert max(abs(s - target) for s in tail) <= 0.02
    assert max(pushes) > 2.0


def test_state_dict_round_trip_resumes_identically() -> None:
    a = LagrangianController(0.5, lambda_init=1.0, deadline=12)
    for i in range(5):
        a.update(i, 0.9 - 0.05 * i, 0.85 - 0.05 * i)
    b = LagrangianController(0.7)
    b.load_state_dict(a.state_dict())
    for i in range(5, 10):
        assert a.update(i, 0.6, 0.62 - 0.01 * i) == b.update(i, 0.6, 0.62 - 0.01 * i)
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="lacks"):
        b.load_state_dict({"kind": "lagrangian"})
    with pytest.raises(ValueError, match="not a lagrangian"):
        b.load_state_dict({**a.state_dict(), "kind": "proportional"})


@pytest.mark.parametrize("kwargs, match", [
    (dict(target=0.0), "target"), (dict(target=0.5, lambda_init=-1.0), "lambda_init"),
    (dict(target=0.5, lambda_init=20.0), "lambda_init"), (dict(target=0.5, gain=0.0), "gain"),
    (dict(target=0.5, lambda_min=-1.0), "lambda_min"), (dict(target=0.5, lambda_min=0.5, lambda_init=0.1), "lambda_init"),
    (dict(target=0.5, deadline=0), "deadline"), (dict(target=0.5, metric="bits"), "metric"),
    (dict(target=0.5, lambda_max=math.inf), "lambda_max")])
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LagrangianController(**kwargs)


def test_policy_builds_a_lagrangian_controller_aimed_at_the_deadline() -> None:
    import gdp_graph as G
    from tests.test_gate_window import Net
    policy = _policy(lambda_controller={"kind": "lagrangian", "deadline": True}, fix_at=0.5)
    gated = G.attach(Net(), policy, example_inputs=torch.randn(2, 3, 8, 8), total_steps=40)
    assert isinstance(gated.controller, LagrangianController)
    assert gated.controller.deadline == gated.phase.epsilon_schedule.total_steps == 20


def test_policy_refuses_a_lambda_outside_min_to_max() -> None:
    data = {"version": 1, "regularizer": {"name": "gdp", "lambda": 20.0,
                                          "lambda_controller": {"kind": "lagrangian", "max": 5.0}}}
    with pytest.raises(PolicyError, match=r"regularizer\.lambda \(20\.0\) is outside lambda_controller"):
        policy_from_dict(data)


def test_a_shipped_policy_switches_to_the_lagrangian_controller_by_one_override() -> None:
    """`gdp-graph train --set regularizer.lambda_controller.kind=lagrangian` on cifar_resnet (whose
    controller sets min, max and deadline) builds, and the controller keeps its bounds."""
    from gdp_graph.policy import load_policy, set_override
    data = load_policy("cifar_resnet").to_dict()
    set_override(data, "regularizer.lambda_controller.kind=lagrangian")
    ctrl = policy_from_dict(data).regularizer.lambda_controller
    assert (ctrl.kind, ctrl.min, ctrl.max, ctrl.deadline) == ("lagrangian", 1e-3, 100.0, True)


def test_with_the_budget_held_the_soft_cost_reaches_the_target_before_the_cut() -> None:
    """The 20-step window of test_gate_window: the soft cost (not only the hard count) is at the
    target when the gates are cut, and the cut changes few units."""
    policy = _policy(fix_at=0.5, hold_budget=True, lambda_controller={"kind": "lagrangian", "deadline": True},
                     epsilon__max_travel=0.75, epsilon__end_at=0.8)
    gated, hard, last = _train_window(policy)
    target, tol = policy.target.fraction, policy.target.tolerance
    soft = gated.controller.history[-1]["soft_fraction"]
    assert abs(soft - target) <= tol + 0.05
    assert min(hard) >= target - tol - 0.05
    cut = torch.cat([g[~gated.analysis.groups[gid].frozen_units] for gid, g in gated.group_gates().items()]) == 0
    assert int(((last <= 0.5) != cut).sum()) <= 2

