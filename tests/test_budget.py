"""The hard cost fraction and the lambda controller: exactness against plan costs, landing on
simulated plants, checkpointing, argument checks, and a simulated GDP gate training on zoo
models."""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch

from gdp_graph.graph.analysis import analyze
from gdp_graph.gates.budget import OVERSHOOT_BOUND, BudgetController, hard_fraction, soft_fraction
from gdp_graph.graph.cost import CostModel
from gdp_graph.prune.plan import random_plan
from gdp_graph.gates.regularizers import make_regularizer
from tests.zoo import ZOO


_COST_MODELS: dict[str, CostModel] = {}


def zoo_cost_model(name: str) -> CostModel:
    """The cost model of a zoo model, built once per test session."""
    if name not in _COST_MODELS:
        model, inputs = ZOO[name]()
        _COST_MODELS[name] = CostModel(analyze(model, inputs))
    return _COST_MODELS[name]


@pytest.fixture(params=["resnet_basic", "mobilenetv2", "vit"])
def cost_model(request: pytest.FixtureRequest) -> CostModel:
    return zoo_cost_model(request.param)


# -- hard and soft fractions --------------------------------------------------------------------
def gates_for_plan(cm: CostModel, keep, removed_blocks, threshold: float, seed: int = 0):
    """Random gates that a threshold turns into the plan: kept units above it, removed ones at
    or below it (some exactly at it)."""
    gen = torch.Generator().manual_seed(seed)
    group_gates = {}
    for g in cm.analysis.groups:
        if not g.prunable:
            continue
        kept = torch.zeros(g.size, dtype=torch.bool)
        kept[list(keep.get(g.id, range(g.size)))] = True
        high = threshold + (1 - threshold) * torch.rand(g.size, generator=gen).clamp_min(1e-3)
        low = threshold * torch.rand(g.size, generator=gen)
        low[::3] = threshold
        group_gates[g.id] = torch.where(kept, high, low)
    block_gates = {b.id: torch.tensor(threshold / 2 if b.id in removed_blocks else 0.9) for b in cm.analysis.blocks}
    return group_gates, block_gates


@pytest.mark.parametrize("threshold", [1e-6, 0.5])
def test_hard_fraction_equals_plan_cost(cost_model: CostModel, threshold: float) -> None:
    for seed, ratio in enumerate((0.2, 0.5, 0.8)):
        plan = random_plan(cost_model.analysis, ratio, seed=seed, block_ratio=0.5 if cost_model.analysis.blocks else None)
        groups, blocks = gates_for_plan(cost_model, plan.keep, plan.removed_blocks, threshold, seed)
        expected = cost_model.plan_cost(plan.keep, sorted(plan.removed_blocks))
        for metric in ("flops", "params"):
            got = hard_fraction(cost_model, groups, blocks, threshold=threshold, metric=metric)
            total = cost_model.total.metric(metric)
            slack = 0.5 / total if metric == "params" else 1e-12  # plan_cost rounds parameters
            assert got == pytest.approx(expected.metric(metric) / total, rel=1e-9, abs=slack)
            assert 0.0 <= got < 1.0


def test_hard_fraction_extremes(cost_model: CostModel) -> None:
    ones = {g.id: torch.ones(g.size) for g in cost_model.analysis.groups if g.prunable}
    assert hard_fraction(cost_model, ones, {}, threshold=1e-6, metric="flops") == 1.0
    assert hard_fraction(cost_model, {}, {}, threshold=1e-6, metric="params") == 1.0
    zeros = {gid: torch.zeros_like(g) for gid, g in ones.items()}
    assert 0.0 <= hard_fraction(cost_model, zeros, {}, threshold=1e-6, metric="flops") < 0.5


def test_soft_fraction_is_the_gdp_value(cost_model: CostModel) -> None:
    torch.manual_seed(0)
    groups = {g.id: torch.rand(g.size) for g in cost_model.analysis.groups if g.prunable}
    blocks = {b.id: torch.rand(()) for b in cost_model.analysis.blocks}
    for metric in ("flops", "params"):
        reg = make_regularizer("gdp", cost_model, metric=metric)
        expected = reg(groups, blocks).item()
        assert soft_fraction(cost_model, groups, blocks, metric=metric) == pytest.approx(expected, rel=1e-5)


def test_fraction_arguments(cost_model: CostModel) -> None:
    with pytest.raises(ValueError, match="metric"):
        hard_fraction(cost_model, {}, {}, threshold=1e-6, metric="latency")
    with pytest.raises(ValueError, match="threshold"):
        hard_fraction(cost_model, {}, {}, threshold=1.0, metric="flops")
    with pytest.raises(ValueError, match="metric"):
        soft_fraction(cost_model, {}, {}, metric="macs")


# -- the controller on a simulated plant --------------------------------------------------------
@dataclass
class Plant:
    """A stand-in for gate training: the fraction that lambda would leave in equilibrium falls
    with log(lambda) (``steepness``; ``lam_mid`` removes half of what can go, ``floor`` stays),
    lambda acts after ``dead`` updates, the fraction follows with a first-order lag (``tau_down``
    updates when falling, a slower ``tau_up`` when recovering), the hard count lags the soft one
    by ``hard_lag`` updates, and both are measured with Gaussian ``noise``."""

    lam_mid: float = 0.3
    steepness: float = 1.5
    floor: float = 0.05
    dead: int = 30
    tau_down: float = 40.0
    tau_up: float = 300.0
    hard_lag: int = 20
    noise: float = 0.004
    seed: int = 0
    lams: list = field(default_factory=list)
    softs: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.state = 1.0

    def equilibrium(self, lam: float) -> float:
        removed = 1.0 / (1.0 + math.exp(-self.steepness * (math.log(lam) - math.log(self.lam_mid))))
        return 1.0 - (1.0 - self.floor) * removed

    def step(self, lam: float) -> tuple[float, float]:
        """Apply this update's lambda; return the measured (hard, soft) fractions."""
        self.lams.append(lam)
        acting = self.lams[-1 - self.dead] if len(self.lams) > self.dead else 0.0
        goal = self.equilibrium(acting) if acting > 0 else 1.0
        self.state += (goal - self.state) / (self.tau_down if goal < self.state else self.tau_up)
        self.softs.append(self.state)
        hard = self.softs[-1 - self.hard_lag] if len(self.softs) > self.hard_lag else 1.0
        clip = lambda x: min(1.0, max(0.0, x + self.rng.gauss(0.0, self.noise)))  # noqa: E731
        return clip(hard), clip(self.state)


def drive(controller: BudgetController, plant: Plant, steps: int, start: int = 0, use_soft: bool = True) -> None:
    for step in range(start, start + steps):
        hard, soft = plant.step(controller.lam)
        controller.update(step, hard, soft if use_soft else None)


def landing(controller: BudgetController, truth: list[float]) -> tuple[Optional[int], float, float]:
    """(first update whose measured hard fraction is at or below target + tolerance, deepest
    fall of the true fraction below the band after it, share of the last fifth of the run with
    the true fraction inside the band)."""
    hard = [h["hard_fraction"] for h in controller.history]
    low = controller.target - controller.tolerance
    first = next((i for i, h in enumerate(hard) if h <= controller.target + controller.tolerance), None)
    fall = max((low - f for f in truth[first:]), default=0.0) if first is not None else 0.0
    tail = truth[len(truth) * 4 // 5:]
    return first, fall, sum(controller.in_band(f) for f in tail) / len(tail)


PLANTS = {
    "nominal": {},
    "long-lag": {"dead": 60, "tau_down": 80.0},
    "steep": {"steepness": 4.0},
    "noisy": {"noise": 0.01},
    "high-lambda": {"lam_mid": 3.0},
}


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("plant", list(PLANTS))
def test_controller_lands_and_holds(target: float, plant: str) -> None:
    ctrl = BudgetController(target)
    simulated = Plant(**PLANTS[plant])
    drive(ctrl, simulated, 4000)
    first, fall, held = landing(ctrl, simulated.softs)
    assert ctrl.reached and first is not None
    assert fall <= OVERSHOOT_BOUND, f"fell {fall:.3f} below the band"
    assert ctrl.in_band(simulated.state), f"settled at {simulated.state:.3f}"
    assert held >= 0.95, f"in the band {held:.0%} of the last fifth"
    assert ctrl.lambda_min <= min(h["lambda"] for h in ctrl.history)
    assert max(h["lambda"] for h in ctrl.history) <= ctrl.lambda_max


def test_look_ahead_prevents_overshoot() -> None:
    """Without the look-ahead (horizon 0) the same plant overshoots far: the bound is the
    controller's doing."""
    ctrl = BudgetController(0.5, horizon=0)
    simulated = Plant(**PLANTS["long-lag"])
    drive(ctrl, simulated, 4000)
    assert landing(ctrl, simulated.softs)[1] > 2 * OVERSHOOT_BOUND


def test_controller_holds_inside_the_band() -> None:
    ctrl = BudgetController(0.5, lambda_init=0.01)
    for step, hard in enumerate([0.51, 0.49, 0.52, 0.48, 0.5]):
        assert ctrl.update(step, hard) == 0.01
    assert ctrl.reached


def test_controller_direction_and_clamp() -> None:
    ctrl = BudgetController(0.5, lambda_init=1e-3, gain=0.1, lambda_max=1e-2)
    assert ctrl.update(0, 1.0) == pytest.approx(1e-3 * math.exp(0.1))  # far above: full speed
    assert not ctrl.reached
    for step in range(1, 100):
        ctrl.update(step, 1.0)
    assert ctrl.lam == 1e-2  # clamped
    ctrl = BudgetController(0.5, lambda_init=1e-3, gain=0.1, lambda_min=5e-4, horizon=0)
    assert ctrl.update(0, 0.2) == pytest.approx(1e-3 * math.exp(-0.1))  # far below: decays
    for step in range(1, 100):
        ctrl.update(step, 0.2)
    assert ctrl.lam == 5e-4 and ctrl.reached
    ctrl = BudgetController(0.5, lambda_init=1e-3, gain=0.1, horizon=0)
    assert ctrl.update(0, 0.55) == pytest.approx(1e-3 * math.exp(0.1 * 0.05 / ctrl.span))  # proportional near the band


def test_history_records_every_update() -> None:
    ctrl = BudgetController(0.5)
    ctrl.update(3, 0.9, 0.8)
    ctrl.update(4, 0.8)
    assert [h["step"] for h in ctrl.history] == [3, 4]
    assert ctrl.history[0] == {"step": 3, "hard_fraction": 0.9, "soft_fraction": 0.8, "lambda": ctrl.history[0]["lambda"]}
    assert ctrl.history[1]["soft_fraction"] is None and ctrl.history[1]["lambda"] == ctrl.lam


def test_state_dict_round_trip_resumes_identically() -> None:
    ctrl = BudgetController(0.4, gain=0.02, tolerance=0.01)
    plant = Plant(seed=3)
    drive(ctrl, plant, 700)
    state = json.loads(json.dumps(ctrl.state_dict()))  # checkpoints may go through JSON
    resumed = BudgetController(0.9)  # other settings: the state brings its own
    resumed.load_state_dict(state)
    assert resumed.state_dict() == ctrl.state_dict()
    twin = copy.deepcopy(plant)
    drive(ctrl, plant, 700, start=700)
    drive(resumed, twin, 700, start=700)
    assert resumed.history == ctrl.history and resumed.lam == ctrl.lam and resumed.reached == ctrl.reached


def test_load_state_dict_rejects_bad_state() -> None:
    state = BudgetController(0.5).state_dict()
    with pytest.raises(ValueError, match="lacks lam"):
        BudgetController(0.5).load_state_dict({k: v for k, v in state.items() if k != "lam"})
    with pytest.raises(ValueError, match="target"):
        BudgetController(0.5).load_state_dict({**state, "target": 2.0})


@pytest.mark.parametrize("kwargs, match", [
    ({"target": 0.0}, "target"),
    ({"target": 1.5}, "target"),
    ({"target": float("nan")}, "target"),
    ({"target": 0.5, "metric": "macs"}, "metric"),
    ({"target": 0.5, "tolerance": -0.1}, "tolerance"),
    ({"target": 0.5, "gain": 0.0}, "gain"),
    ({"target": 0.5, "lambda_init": 0.0}, "lambda_init"),
    ({"target": 0.5, "lambda_init": 100.0}, "lambda_init"),
    ({"target": 0.5, "lambda_min": -1.0}, "lambda_min"),
    ({"target": 0.5, "lambda_max": 0.0}, "lambda_max"),
    ({"target": 0.5, "lambda_min": 1.0, "lambda_max": 0.1}, "must not exceed"),
    ({"target": 0.5, "horizon": -1.0}, "horizon"),
    ({"target": 0.5, "smoothing": 1.0}, "smoothing"),
    ({"target": 0.5, "span": 0.0}, "span"),
    ({"target": True}, "target"),
])
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BudgetController(**kwargs)


def test_invalid_updates() -> None:
    ctrl = BudgetController(0.5)
    for args, match in [((0, float("nan")), "hard_fraction"), ((0, -0.1), "hard_fraction"),
                        ((0, 0.5, float("inf")), "soft_fraction"), ((0.5, 0.5), "step")]:
        with pytest.raises(ValueError, match=match):
            ctrl.update(*args)
    assert ctrl.history == []


# -- a simulated GDP gate training on zoo models --------------------------------------------------
@dataclass(frozen=True)
class GateTraining:
    """A data-free stand-in for GDP training. One parameter ``theta`` per unit, projected onto
    [0, 1] after each Adam step (unbounded, theta drifts up under the task term and the time a
    gate needs to close, i.e. the controller's lag, grows without bound); gate
    ``g = theta^2 / (theta^2 + eps)`` with ``eps`` cosine-annealed from ``eps_start`` to
    ``eps_end``. The task term prefers open gates: ``mean_u w_u (1 + noise * xi_u) (1 - g_u)``
    with per-unit importance ``w_u ~ Exp(1)`` and fresh Gaussian ``xi`` each step; the loss adds
    ``lambda * gdp``. Groups one of whose units carries more than ``max_unit_share`` of the FLOPs
    stay ungated (as a policy keeping the stem would): a unit that size cannot land in a band
    of +-0.02."""

    steps: int = 800
    lr: float = 0.1
    eps_start: float = 1e-2
    eps_end: float = 1e-8
    noise: float = 0.2
    threshold: float = 1e-6
    max_unit_share: float = 0.05
    lambda_init: float = 1e-2
    gain: float = 0.02

    def epsilon(self, step: int) -> float:
        return self.eps_end + (self.eps_start - self.eps_end) * (1 + math.cos(math.pi * step / self.steps)) / 2


#: how close the simulated trainings land to the target: the controller's band (0.02) plus
#: the share of one unit of these small models, which may be the last to go
LANDING_TOLERANCE = 0.03


def train_gates(name: str, target: float, seed: int, sim: GateTraining = GateTraining()) -> BudgetController:
    """Run the simulated training of ``name``'s gates towards ``target`` FLOPs; return the
    controller (its history holds the hard fraction after every step)."""
    cm = zoo_cost_model(name)
    unit = cm.unit_costs()
    gated = [g for g in cm.analysis.groups
             if g.prunable and g.exact and unit[g.id].flops <= sim.max_unit_share * cm.total.flops]
    sizes = [g.size for g in gated]
    gen = torch.Generator().manual_seed(seed)
    theta = torch.ones(sum(sizes), requires_grad=True)
    importance = -torch.rand(theta.shape, generator=gen).log()  # Exp(1)
    reg = make_regularizer("gdp", cm)
    opt = torch.optim.Adam([theta], lr=sim.lr)
    ctrl = BudgetController(target, lambda_init=sim.lambda_init, gain=sim.gain)

    def gates(eps: float) -> dict[int, torch.Tensor]:
        # 1 - eps / (theta^2 + eps) is theta^2 / (theta^2 + eps), with an accurate gradient in float32
        return dict(zip((g.id for g in gated), (1 - eps / (theta * theta + eps)).split(sizes)))

    for step in range(sim.steps):
        eps = sim.epsilon(step)
        g = gates(eps)
        noisy = importance * (1 + sim.noise * torch.randn(theta.shape, generator=gen))
        task = (noisy * (1 - torch.cat(list(g.values())))).mean()
        opt.zero_grad()
        (task + ctrl.lam * reg(g, {})).backward()
        opt.step()
        with torch.no_grad():
            theta.clamp_(0.0, 1.0)
            g = gates(eps)
            ctrl.update(step, hard_fraction(cm, g, {}, threshold=sim.threshold, metric="flops"),
                        soft_fraction(cm, g, {}, metric="flops"))
    return ctrl


@pytest.mark.parametrize("name", ["mobilenetv2", "vit"])
def test_simulated_gdp_training_lands_on_target(name: str) -> None:
    ctrl = train_gates(name, 0.5, seed=0)
    final = ctrl.history[-1]["hard_fraction"]
    assert abs(final - 0.5) <= LANDING_TOLERANCE, f"{name}: landed at {final:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv2", "vit"])
@pytest.mark.parametrize("seed", range(1, 6))
def test_simulated_gdp_training_lands_on_target_slow(name: str, seed: int) -> None:
    ctrl = train_gates(name, 0.5, seed=seed)
    final = ctrl.history[-1]["hard_fraction"]
    assert abs(final - 0.5) <= LANDING_TOLERANCE, f"{name} seed {seed}: landed at {final:.3f}"
