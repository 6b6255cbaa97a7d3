"""Lambda during the gates' dead time: a smoothed-L0 gate's value only moves once theta has
come down to about sqrt(epsilon), so with a short gated phase lambda winds up before any cost
moves (issue 7). ``lambda_controller.lead: travel`` feeds the look-ahead from the gates' travel,
which moves from the first step. No data: the task term is synthetic."""

from __future__ import annotations

import math

import pytest
import torch

from gdp_graph.gates.attach import attach
from gdp_graph.gates.budget import BudgetController, soft_fraction
from gdp_graph.policy import PolicyError, load_policy, policy_from_dict
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet


def test_lead_holds_lambda_while_the_soft_fraction_has_not_moved_yet() -> None:
    """Soft flat at 0.98 for 40 updates (dead time) while the lead falls 0.01 per update: with the
    lead lambda holds; without it lambda grows at full speed (exp(gain) per update)."""
    plain, led = BudgetController(0.5, lambda_init=1.0, gain=0.05), BudgetController(0.5, lambda_init=1.0, gain=0.05)
    for step in range(40):
        plain.update(step, 0.98, 0.98)
        led.update(step, 0.98, 0.98, lead=1.0 - 0.01 * step)
    assert plain.lam > math.exp(0.05 * 35)
    assert led.lam < 1.5  # the smoothed slope needs a few updates to build up
    assert led.history[-1]["lead"] == pytest.approx(0.61) and "lead" not in plain.history[-1]


def test_lead_without_movement_still_lets_lambda_grow() -> None:
    """A lead that does not move (no gate on its way down: lambda too small) is no brake."""
    ctrl = BudgetController(0.5, lambda_init=1.0, gain=0.05)
    for step in range(40):
        ctrl.update(step, 0.98, 0.98, lead=0.99)
    assert ctrl.lam > math.exp(0.05 * 35)


def test_lead_must_be_a_finite_fraction() -> None:
    with pytest.raises(ValueError, match="lead"):
        BudgetController(0.5).update(0, 0.9, 0.9, lead=float("nan"))


def _policy(lead: str, eps_start: float = 1e-2, reopen: bool = False):
    """``cifar_resnet`` with the given lead and reopen, without ``epsilon.max_travel`` (the
    mechanism as it was before the shipped policy set it)."""
    data = load_policy("cifar_resnet").to_dict()
    data["regularizer"]["lambda_controller"]["lead"] = lead
    data["regularizer"]["epsilon"]["start"] = eps_start
    data["regularizer"]["epsilon"].pop("max_travel", None)
    data["regularizer"]["reopen"] = reopen
    # the uniform start, no budget hold and no deadline: the dead-time mechanics these tests pin
    data["regularizer"].update(init="uniform", hold_budget=False)
    data["regularizer"]["lambda_controller"]["deadline"] = False
    return policy_from_dict(data, source="test", name="cifar_resnet")


def _gated(lead: str, steps: int = 156, eps_start: float = 1e-2, reopen: bool = False):
    torch.manual_seed(0)
    return attach(cifar_resnet(20), policy=_policy(lead, eps_start, reopen), example_inputs=torch.randn(2, 3, 32, 32),
                  total_steps=steps, steps_per_epoch=39)


def gate_phase(lead: str, scale: float = 0.3, seed: int = 0, reopen: bool = False) -> dict:
    """The short preset's gate phase (156 steps, fix_at 0.3: 47 steps of gate training, Adam
    0.02, theta from ~1) on ResNet-20 with the ``cifar_resnet`` policy and a synthetic task term
    that prefers open gates (per-unit importance ~ Exp(1) * ``scale``, noisy each step): returns
    lambda at the cut, the soft fraction before the cut, and the share of kept gates below 0.5.
    ``scale`` 0.3 reproduces the preset's wind-up (lambda ~6, soft ~0.35 at the cut)."""
    gated = _gated(lead, reopen=reopen)
    bank = gated.bank
    n = bank.num_units
    gen = torch.Generator().manual_seed(seed)
    importance = -torch.rand(n, generator=gen).log() * scale
    opt = gated.gate_optimizer()
    while not bool(gated.fixed):
        noisy = importance * (1 + torch.randn(n, generator=gen))
        task = 10 * (noisy * (1 - bank.flat()[:n])).mean()
        opt.zero_grad()
        (task + gated.penalty()).backward()
        opt.step()
        gated.step()
    kept = bank.fixed_values[:n][bank.fixed_values[:n] > 0]
    return {"lambda": gated.lam, "soft_before": gated.fix_report["soft_before"],
            "kept_low": float((kept < 0.5).float().mean()), "fraction": gated.fix_report["fraction"],
            "report": dict(gated.fix_report), "soft_after": gated.fractions()[1]}


def test_travel_lead_removes_the_wind_up_of_a_short_gate_phase() -> None:
    soft, travel = gate_phase("soft"), gate_phase("travel")
    assert soft["lambda"] > 4 and soft["soft_before"] < 0.42  # the mechanism of issue 7, reproduced
    assert travel["lambda"] < 2 and abs(travel["soft_before"] - 0.5) < 0.06
    assert travel["kept_low"] < soft["kept_low"] / 2
    assert abs(travel["fraction"] - 0.5) <= 0.02


def test_travel_fraction_is_the_cost_of_theta_over_its_start() -> None:
    gated = _gated("travel")
    bank = gated.bank
    assert bank.theta_start == pytest.approx(math.sqrt(1e-2 * 0.99 / 0.01))
    assert gated.travel_fraction() == pytest.approx(1.0)
    gid = bank.group_ids[0]
    with torch.no_grad():
        bank.group_theta[str(gid)].mul_(0.5)  # half way down: as if those gates were 0.5
        bank.group_theta[str(bank.group_ids[1])].mul_(3.0)  # above the start counts as 1
    groups = {g: torch.ones(len(bank.group_theta[str(g)])) for g in bank.group_ids}
    groups[gid] = torch.full_like(groups[gid], 0.5)
    expected = soft_fraction(gated.cost_model, groups, {}, metric="flops")
    assert expected < 0.99 and gated.travel_fraction() == pytest.approx(expected)


def test_lead_policy_key() -> None:
    assert load_policy("cifar_resnet").regularizer.lambda_controller.lead == "soft"
    assert _policy("travel").regularizer.lambda_controller.lead == "travel"
    assert _policy("travel").to_dict()["regularizer"]["lambda_controller"]["lead"] == "travel"
    with pytest.raises(PolicyError, match="lead"):
        _policy("gates")
    constant = load_policy("cifar_resnet").to_dict()
    constant["regularizer"]["lambda_controller"] = {"kind": "constant", "lead": "travel"}
    with pytest.raises(PolicyError, match="lead"):
        policy_from_dict(constant, source="test", name="x")


# -- epsilon.max_travel: theta starts low enough to reach 0 within the gates' window ---------------
def test_fit_to_window_lowers_the_start_only_when_the_window_is_too_short() -> None:
    from gdp_graph.gates.bank import GateError
    from gdp_graph.gates.schedule import fit_to_window
    from gdp_graph.policy import EpsilonSchedule

    plain = EpsilonSchedule(1e-2, 1e-8, "cosine")
    assert fit_to_window(plain, init_gate=0.99, gate_lr=0.02, steps=5) is plain  # no max_travel: as given
    curve = EpsilonSchedule(1e-2, 1e-8, "cosine", max_travel=0.75)
    assert fit_to_window(curve, init_gate=0.99, gate_lr=0.02, steps=71) is curve  # 0.75*0.02*71 > 0.995
    short = fit_to_window(curve, init_gate=0.99, gate_lr=0.02, steps=47)
    assert math.sqrt(short.start * 99) == pytest.approx(0.75 * 0.02 * 47)  # theta_start = travel * lr * steps
    assert (short.end, short.schedule, short.max_travel) == (1e-8, "cosine", 0.75)
    with pytest.raises(GateError, match="max_travel"):
        fit_to_window(curve, init_gate=0.99, gate_lr=1e-6, steps=1)


def test_max_travel_sets_where_theta_starts_in_the_gated_model() -> None:
    data = _policy("soft").to_dict()
    data["regularizer"]["epsilon"]["max_travel"] = 0.5
    policy = policy_from_dict(data, source="test", name="x")
    assert policy.regularizer.epsilon.max_travel == 0.5
    assert policy_from_dict(policy.to_dict(), source="t", name="x") == policy
    assert "max_travel" not in _policy("soft").to_dict()["regularizer"]["epsilon"]
    gated = attach(cifar_resnet(8), policy=policy, example_inputs=torch.randn(2, 3, 32, 32), total_steps=100,
                   gate_lr=0.01)
    assert gated.fix_step == 30
    assert gated.bank.theta_start == pytest.approx(0.5 * 0.01 * 30)
    assert gated.epsilon == pytest.approx(0.15 ** 2 / 99)
    assert gated.gate_optimizer().param_groups[0]["lr"] == 0.01
    long = attach(cifar_resnet(8), policy=policy, example_inputs=torch.randn(2, 3, 32, 32), total_steps=1000)
    assert long.epsilon == 1e-2 and long.bank.theta_start == pytest.approx(math.sqrt(0.99))


# -- regularizer.reopen: kept gates fixed at 1 at the cut ------------------------------------------
def test_reopen_fixes_every_kept_gate_at_one() -> None:
    """The wound-up short phase leaves kept gates at the floor (counted in the budget, carrying
    ~nothing); with reopen they are fixed at 1, the cut itself (which units go) is unchanged."""
    stuck, reopened = gate_phase("soft"), gate_phase("soft", reopen=True)
    assert stuck["kept_low"] > 0.1 and stuck["report"]["kept_low"] > 0 and stuck["report"]["reopened"] == 0
    assert stuck["soft_after"] < stuck["fraction"] - 0.05  # the floor gates make the soft cost lower
    assert reopened["kept_low"] == 0.0
    assert reopened["report"]["reopened"] == stuck["report"]["kept_low"]
    assert reopened["report"]["cut_units"] == stuck["report"]["cut_units"]
    assert reopened["soft_after"] == pytest.approx(reopened["fraction"], abs=1e-6)  # polarized: soft = hard


def test_reopened_gates_finalize_exactly() -> None:
    from gdp_graph.gates.finalize import finalize

    data = _policy("soft", reopen=True).to_dict()
    data["regularizer"]["lambda"] = 50.0  # every gate falls: the cut keeps gates at their floor
    policy = policy_from_dict(data, source="test", name="x")
    torch.manual_seed(0)
    gated = attach(cifar_resnet(8), policy=policy, example_inputs=torch.randn(2, 3, 32, 32), total_steps=200)
    opt = gated.gate_optimizer(0.1)
    while not bool(gated.fixed):
        opt.zero_grad()
        gated.penalty().backward()
        opt.step()
        gated.step()
    assert gated.fix_report["reopened"] > 0
    values = gated.bank.fixed_values
    assert set(values.unique().tolist()) <= {0.0, 1.0}
    pruned, report = finalize(gated.eval())
    assert report.check.ok and report.check.max_rel_diff <= 1e-5


def test_reopen_moves_the_kept_gate_values_into_the_weights_so_nothing_jumps() -> None:
    """At the cut, the kept gates go to 1 and their values into the input columns of the convs
    they scale: the model computes what it did with the cut applied and the gates as they were."""
    from gdp_graph.gates.absorb import reopen_into_weights

    torch.manual_seed(0)
    gated = attach(cifar_resnet(8), policy=_policy("soft", reopen=True), example_inputs=torch.randn(2, 3, 32, 32),
                   total_steps=200).eval()
    bank = gated.bank
    with torch.no_grad():  # gates spread over (floor, 1): some would jump a hundredfold if set to 1
        theta = bank._theta()
        bank._write_theta(theta * torch.rand(theta.shape, generator=torch.Generator().manual_seed(1)).pow(3))
    cut = torch.zeros(bank.one_position, dtype=torch.bool)
    cut[::5] = True
    bank.kill(cut)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = gated(x)
    weights = {k: v.clone() for k, v in gated.module.state_dict().items() if "weight" in k}
    low = reopen_into_weights(gated.analysis, bank, gated.module)
    live = ~bank.dead & ~bank.frozen
    assert low > 10 and bool((bank.fixed_values[live] == 1).all()) and bool((bank.fixed_values[bank.dead] == 0).all())
    with torch.no_grad():
        torch.testing.assert_close(gated(x), expected, rtol=1e-4, atol=1e-5)
    changed = [k for k, v in gated.module.state_dict().items() if k in weights and not torch.equal(v, weights[k])]
    layers = {k.removesuffix(".weight") for k in changed}
    assert layers and all(isinstance(gated.module.get_submodule(n), (torch.nn.Conv2d, torch.nn.Linear)) for n in layers)


def test_shipped_cifar_policy_fits_the_short_preset_and_leaves_the_benchmark_alone() -> None:
    """cifar_resnet sets max_travel 0.75 and reopen: the short preset's 47 gate steps (156 * 0.3)
    start theta at 0.75 * 0.02 * 47; the CIFAR benchmark's 70 (234 * 0.3) keep epsilon 1e-2."""
    from gdp_graph.gates.schedule import fit_to_window

    reg = load_policy("cifar_resnet").regularizer
    assert reg.reopen and reg.epsilon.max_travel == 0.75
    assert fit_to_window(reg.epsilon, init_gate=0.99, gate_lr=0.02, steps=70) is reg.epsilon
    preset = attach(cifar_resnet(8), policy="cifar_resnet", example_inputs=torch.randn(2, 3, 32, 32),
                    total_steps=156, steps_per_epoch=39)
    assert preset.fix_step == 47 and preset.bank.theta_start == pytest.approx(0.75 * 0.02 * 47)
