"""Gates: schedule, bank, the gated graph, training behaviour (exact zeros, resume, autocast)
and the guarantee that the user's model is never touched."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gdp_graph.gates.attach import attach
from gdp_graph.gates.finalize import finalize
from gdp_graph.gates.model import GateError
from gdp_graph.gates.schedule import EpsilonRamp
from gdp_graph.graph.inject import gate_multiply, gated_layer
from gdp_graph.policy import EpsilonSchedule
from tests.fixtures.gated_steps import train_steps
from tests.zoo import ZOO


class TinyRes(nn.Module):
    """A stem, one removable residual block, a classifier: groups, a block, BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


class PartFrozen(nn.Module):
    """Channels 0 and 1 of conv1's output reach the model output: those units are frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        return torch.cat([self.conv2(y), y[:, :2]], 1)


def gdp_policy(**regularizer) -> dict:
    # the uniform gate mechanics these tests pin down (ranked start and budget hold: test_gate_window)
    reg = {"name": "gdp", "lambda": 0.01, "lambda_controller": {"kind": "constant"},
           "epsilon": {"start": 0.1, "end": 1.0e-4}, "init": "uniform", "hold_budget": False}
    reg.update(regularizer)
    return {"version": 1, "regularizer": reg, "defaults": {"block_level": "block"}}


def batch(step: int, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * seed + step)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


# -- the epsilon schedule -----------------------------------------------------------------------
def test_epsilon_schedule_interpolates_and_clamps() -> None:
    exp = EpsilonRamp(EpsilonSchedule(1.0, 1e-4, "exponential"), 100)
    assert exp.value(0) == 1.0 and exp.value(100) == 1e-4 and exp.value(500) == 1e-4 and exp.value(-3) == 1.0
    assert math.isclose(exp.value(50), 1e-2, rel_tol=1e-12)  # geometric midpoint
    lin = EpsilonRamp(EpsilonSchedule(1.0, 0.5, "linear"), 4)
    assert [lin(s) for s in range(5)] == [1.0, 0.875, 0.75, 0.625, 0.5]
    cos = EpsilonRamp(EpsilonSchedule(1.0, 0.0001, "cosine"), 10)
    values = [cos(s) for s in range(11)]
    assert values[0] == 1.0 and values[-1] == 0.0001 and all(a > b for a, b in zip(values, values[1:]))
    assert math.isclose(cos(5), (1.0 + 0.0001) / 2)


@pytest.mark.parametrize("args", [(0.0, 1e-4, 10), (1.0, -1.0, 10), (1.0, 1e-4, 0), (1.0, 1e-4, 10, "step"),
                                  (float("nan"), 1e-4, 10), (1.0, 1e-4, 2.5)])
def test_epsilon_schedule_rejects(args) -> None:
    start, end, total, *kind = args
    with pytest.raises(GateError):
        EpsilonRamp(EpsilonSchedule(start, end, *(kind or ["exponential"])), total)


# -- the bank and the gated graph ---------------------------------------------------------------
def test_gates_start_at_init_gate_frozen_units_are_one() -> None:
    x = torch.randn(2, 3, 8, 8)
    gated = attach(PartFrozen(), gdp_policy(), example_inputs=x, total_steps=10)
    (gid, gates), = gated.group_gates().items()
    frozen = gated.analysis.groups[gid].frozen_units
    assert frozen.tolist() == [True, True] + [False] * 6
    assert torch.equal(gates[frozen], torch.ones(2))
    assert torch.allclose(gates[~frozen], torch.full((6,), 0.99))
    # frozen units get no gradient; free ones do
    gated(x).sum().backward()
    grad = gated.bank.group_theta[str(gid)].grad
    assert torch.equal(grad[frozen], torch.zeros(2)) and bool((grad[~frozen] != 0).all())
    # the output group (frozen whole) has no theta at all
    assert set(gated.bank.group_theta) == {str(gid)}


def test_one_bank_call_and_one_multiplier_per_site() -> None:
    model, x = ZOO["densenet"]()
    gated = attach(model, gdp_policy(), example_inputs=x, total_steps=10)
    nodes = list(gated.module.graph.nodes)
    bank_calls = [n for n in nodes if n.op == "call_module" and n.target == gated._bank_name]
    applied = [n for n in nodes if n.op == "call_function" and n.target in (gate_multiply, gated_layer)]
    assert len(bank_calls) == 1 and len(applied) == len(gated.bank.sites) > 0
    # concatenations: some sites multiply the gates of several groups
    assert any(len(s.factors) > 1 for s in gated.bank.sites)
    # every parameter lives once
    names = [n for n, _ in gated.named_parameters()]
    assert len(names) == len({id(p) for p in gated.parameters()})
    assert len(names) == len(list(model.parameters())) + len(gated.gate_parameters())
    # the weights the task optimizer gets: every trainable parameter but the gates, each once
    weights, gates = gated.weight_parameters(), gated.gate_parameters()
    assert len(weights) == len(list(model.parameters())) and not {id(p) for p in weights} & {id(p) for p in gates}


@pytest.mark.parametrize("name", ["resnet_basic", "densenet", "vit", "unet"])
def test_open_gates_reproduce_the_model(name: str) -> None:
    model, x = ZOO[name]()
    gated = attach(model, gdp_policy(), example_inputs=x, total_steps=10)
    assert not gated.training  # follows the model's mode
    with torch.no_grad():
        for p in gated.gate_parameters():
            p.fill_(1e4)  # theta^2 / (theta^2 + eps) == 1.0 in float32
        assert torch.equal(gated(*x), model(*x))


def test_clamped_gates_start_exactly_at_one() -> None:
    model, x = ZOO["resnet_basic"]()
    policy = {"version": 1, "regularizer": {"name": "l1", "lambda": 0.01, "lambda_controller": {"kind": "constant"}}}
    gated = attach(model, policy, example_inputs=x)
    assert gated.bank.kind == "clamped" and gated.epsilon_schedule is None
    with torch.no_grad():
        assert torch.equal(gated(*x), model(*x))
    assert all(bool((g == 1).all()) for g in gated.group_gates().values())


def test_gdp_needs_a_training_length_to_step() -> None:
    gated = attach(TinyRes(), gdp_policy(), example_inputs=torch.randn(2, 3, 8, 8))
    assert gated.epsilon == 0.1  # usable (e.g. to finalize), at epsilon start ...
    with pytest.raises(GateError, match="total_steps"):
        gated.step()  # ... but it cannot anneal without the training length
    epoch_policy = gdp_policy(epsilon={"start": 0.1, "end": 1.0e-4, "step": "epoch"})
    with pytest.raises(GateError, match="steps_per_epoch"):
        attach(TinyRes(), epoch_policy, example_inputs=torch.randn(2, 3, 8, 8), total_steps=20)


# -- training -----------------------------------------------------------------------------------
class Denoise(nn.Module):
    """y = x0 + x1 + x2 + x3 from 8 inputs; hidden channels 4..7 only carry noise."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8, bias=False)
        self.fc2 = nn.Linear(8, 1, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(8))
            self.fc2.weight.fill_(1.0)
        for p in self.parameters():
            p.requires_grad_(False)  # only the gates learn: the answer is known

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def test_gates_reach_exact_zero_on_a_known_answer() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x[:, :4].sum(1, keepdim=True)
    steps = 200
    gated = attach(Denoise(), gdp_policy(fix_at=0.6), example_inputs=x[:2], total_steps=steps, init_gate=0.5)
    opt = gated.gate_optimizer(0.02)
    for _ in range(steps):
        if not bool(gated.fixed):  # only the gates learn here; once fixed nothing does
            opt.zero_grad()
            loss = F.mse_loss(gated(x), y) + gated.penalty()
            loss.backward()
            opt.step()
        gated.step()
    gates = gated.group_gates()[0].detach()
    assert gates.dtype == torch.float32
    assert gates[4:].tolist() == [0.0, 0.0, 0.0, 0.0]  # exactly zero, not small
    assert bool((gates[:4] > 0.99).all())
    assert gated.epsilon == 1e-4 and int(gated.bank.step) == steps
    report = gated.report()
    assert report["zero"] == 0.5 and report["near_one"] == 0.5 and report["dead"] == 4 and report["fixed"]
    assert gated.fix_report["step"] == 120  # fix_at 0.6 of 200 steps
    # fixed: whatever happens to theta, the gates keep their values
    with torch.no_grad():
        gated.bank.group_theta["0"].fill_(3.0)
    assert gated.group_gates()[0].detach().tolist() == gates.tolist()


def test_resume_from_state_dict_is_exact() -> None:
    controller = {"kind": "proportional", "gain": 0.5, "min": 0.0, "max": 1.0}
    policy = gdp_policy(**{"lambda": 0.05, "lambda_controller": controller})
    x0 = torch.randn(2, 3, 8, 8)

    def fresh():
        torch.manual_seed(0)
        gated = attach(TinyRes().train(), policy, example_inputs=x0, total_steps=8, init_gate=0.5)
        return gated, torch.optim.SGD(gated.parameters(), lr=0.05, momentum=0.9)

    whole, opt = fresh()
    expected = train_steps(whole, opt, map(batch, range(8)))

    first, opt = fresh()
    losses = train_steps(first, opt, map(batch, range(4)))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed, opt = fresh()
    resumed.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    losses += train_steps(resumed, opt, map(batch, range(4, 8)))

    assert losses == expected
    assert resumed.lam == whole.lam != 0.05  # the controller moved lambda, and resumed exactly
    assert resumed.epsilon == whole.epsilon == 1e-4
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
    assert any("group_theta" in k for k in a) and any(k.endswith("epsilon") for k in a)
    assert resumed.controller.history == whole.controller.history


def test_autocast_bf16_forward_backward() -> None:
    gated = attach(TinyRes().train(), gdp_policy(), example_inputs=torch.randn(2, 3, 8, 8), total_steps=10)
    x, y = batch(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = gated(x)
        loss = F.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16
    (loss.float() + gated.penalty()).backward()
    grads = [p.grad for p in gated.gate_parameters()]
    assert all(g is not None and g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    assert any(bool((g != 0).any()) for g in grads)
    with torch.no_grad():
        full = gated(x)
    assert (full - logits.float()).abs().max() < 0.05 * full.abs().max() + 0.05


def test_step_anneals_epsilon_and_counts_epochs() -> None:
    policy = gdp_policy(epsilon={"start": 0.1, "end": 1.0e-4, "step": "epoch"}, fix_at=0.75)
    gated = attach(TinyRes(), policy, example_inputs=torch.randn(2, 3, 8, 8), total_steps=16, steps_per_epoch=4)
    schedule = gated.epsilon_schedule
    assert schedule.total_steps == 3 and gated.fix_step == 3  # epsilon ends at fix_at of 4 epochs
    for step in range(1, 17):
        gated.step()
        assert gated.epsilon == schedule.value(min(step // 4, 3))
        assert bool(gated.fixed) == (step >= 12)
    assert int(gated.bank.epoch) == 4 and gated.epsilon == 1e-4
    gated.step(global_step=40)  # the training loop's global step count is accepted as is
    assert int(gated.bank.step) == 40 and int(gated.bank.epoch) == 5


def test_user_model_is_never_mutated() -> None:
    model = TinyRes().train()
    params = {n: p for n, p in model.named_parameters()}
    before = copy.deepcopy(model.state_dict())
    modules = [id(m) for m in model.modules()]
    gated = attach(model, gdp_policy(), example_inputs=torch.randn(2, 3, 8, 8), total_steps=6, init_gate=0.5)
    opt = torch.optim.SGD(gated.parameters(), lr=0.1, momentum=0.9)
    train_steps(gated, opt, map(batch, range(3)))
    with torch.no_grad():
        gated.bank.group_theta[next(iter(gated.bank.group_theta))][:2] = 0.0
    pruned, _ = finalize(gated)
    assert model.training and [id(m) for m in model.modules()] == modules
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] and p.grad is None for n, p in model.named_parameters())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not set(map(id, gated.parameters())) & set(map(id, model.parameters()))
    assert not set(map(id, pruned.parameters())) & set(map(id, model.parameters()))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_report_is_flat_and_complete() -> None:
    gated = attach(TinyRes(), gdp_policy(), example_inputs=torch.randn(2, 3, 8, 8), total_steps=10)
    report = gated.report()
    for key in ("zero", "near_zero", "middle", "near_one", "block_zero", "hard_fraction", "soft_fraction",
                "lambda", "epsilon", "target", "metric", "step"):
        assert key in report
    assert not any(isinstance(v, (dict, list)) for v in report.values())
    assert math.isclose(report["zero"] + report["near_zero"] + report["middle"] + report["near_one"], 1.0)
    assert report["hard_fraction"] == 1.0 and 0 < report["soft_fraction"] < 1.0
