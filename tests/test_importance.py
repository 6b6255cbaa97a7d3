"""One-shot importance (gdp_graph.importance): each method ranks what it should rank last, the
Taylor score is the loss's derivative with respect to a gate, and the one-shot plan meets its
budget on the rewritten model."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gdp_graph as G
from gdp_graph.graph.cost import model_cost
from gdp_graph.importance import ImportanceError, Scores, one_shot_plan, score_units
from gdp_graph.importance.magnitude import _add_slices
from gdp_graph.policy import Policy, policy_from_dict, resolve
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(5, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def _hidden_group(analysis, module: str):
    return next(g for g in analysis.groups if any(m.target == module and m.role == "produce" for m in g.members))


def test_magnitude_is_the_plain_l2_norm_over_every_member_of_the_unit():
    torch.manual_seed(0)
    model = MLP()
    analysis = G.analyze(model, torch.randn(2, 4))
    g = _hidden_group(analysis, "fc1")
    got = score_units(analysis, "magnitude").units[g.id]
    w1, b1, w2 = model.fc1.weight.double(), model.fc1.bias.double(), model.fc2.weight.double()
    want = (w1.pow(2).sum(1) + b1.pow(2) + w2.pow(2).sum(0)).sqrt()  # plain, not squared
    torch.testing.assert_close(got, want.detach())


def test_magnitude_ranks_a_unit_with_zeroed_weights_last():
    torch.manual_seed(0)
    model = ConvNet()
    with torch.no_grad():
        model.conv1.weight[5].zero_(), model.conv1.bias[5].zero_(), model.bn1.weight[5].zero_()
        model.bn1.bias[5].zero_(), model.conv2.weight[:, 5].zero_()
    analysis = G.analyze(model, torch.randn(2, 3, 8, 8))
    s = score_units(analysis, "magnitude").units[_hidden_group(analysis, "conv1").id]
    assert int(s.argmin()) == 5 and float(s[5]) == 0.0 and bool((s[torch.arange(8) != 5] > 0).all())


def test_a_member_whose_size_differs_from_the_labels_raises_instead_of_truncating():
    squares = {0: torch.zeros(4, dtype=torch.float64)}
    with pytest.raises(ImportanceError, match="labelled 4 positions"):
        _add_slices(squares, torch.ones(5, 3), 0, torch.zeros(4, dtype=torch.long), torch.arange(4), "layer 'x'")


def test_activation_ranks_a_dead_channel_last():
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():  # channel 2 is always <= 0 before the ReLU: dead after it
        model.bn1.weight[2], model.bn1.bias[2] = 0.0, -1.0
    analysis = G.analyze(model, torch.randn(2, 3, 8, 8))
    batches = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    scores = score_units(analysis, "activation", batches)
    s = scores.units[_hidden_group(analysis, "conv1").id]
    assert scores.batches == 3 and int(s.argmin()) == 2 and float(s[2]) == 0.0 and float(s.min(0).values) == 0.0
    assert bool((s[torch.arange(8) != 2] > 0).all())


def test_taylor_is_the_finite_difference_of_the_loss_in_a_gate():
    torch.manual_seed(0)
    model = MLP().double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    analysis = G.analyze(model, x[:2])
    g = _hidden_group(analysis, "fc1")
    loss_fn = lambda out, batch: F.mse_loss(out, batch[1])  # noqa: E731
    s = score_units(analysis, "taylor", [(x, y)], loss_fn).units[g.id]

    def loss_at(u: int, gate: float) -> float:
        scale = torch.ones(6, dtype=torch.float64)
        scale[u] = gate
        with torch.no_grad():
            return float(F.mse_loss(model.fc2(torch.relu(model.fc1(x)) * scale), y))

    h = 1e-6
    fd = torch.tensor([abs(loss_at(u, 1 + h) - loss_at(u, 1 - h)) / (2 * h) for u in range(6)], dtype=torch.float64)
    torch.testing.assert_close(s, fd, rtol=1e-5, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())  # nothing written on the user's model


def test_depth_and_taylor_rank_a_block_that_does_nothing_last():
    torch.manual_seed(0)
    model = Residual()
    with torch.no_grad():
        model.blocks[1][2].weight.zero_(), model.blocks[1][2].bias.zero_()
    analysis = G.analyze(model, torch.randn(2, 5))
    middle = next(b.id for b in analysis.blocks if b.name == "blocks.1")
    batches = [(torch.randn(8, 5), torch.randint(0, 2, (8,))) for _ in range(2)]
    depth = score_units(analysis, "depth", batches)
    assert not depth.units and depth.ranked_blocks()[0] == middle and depth.blocks[middle] == pytest.approx(0.0, abs=1e-12)
    taylor = score_units(analysis, "taylor", batches, lambda out, b: F.cross_entropy(out, b[1]))
    assert taylor.ranked_blocks()[0] == middle


def test_depth_plan_removes_the_useless_block_first():
    torch.manual_seed(0)
    model = Residual()
    with torch.no_grad():
        model.blocks[1][2].weight.zero_(), model.blocks[1][2].bias.zero_()
    analysis = G.analyze(model, torch.randn(2, 5), count_flops=True)
    middle = next(b.id for b in analysis.blocks if b.name == "blocks.1")
    policy = policy_from_dict({"version": 1, "defaults": {"level": "none", "block_level": "block"},
                               "target": {"fraction": 0.75}})
    resolution = resolve(policy, analysis.groups, analysis.blocks)
    scores = score_units(analysis, "depth", [(torch.randn(8, 5), None)])
    plan, kept = one_shot_plan(analysis, scores, resolution)
    assert plan.removed_blocks == frozenset({middle}) and kept < 1.0


def test_one_shot_plan_meets_the_budget_on_the_rewritten_model():
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()
    x = torch.randn(2, 3, 32, 32)
    analysis = G.analyze(model, x, count_flops=True)
    resolution = resolve(Policy.default(), analysis.groups, analysis.blocks)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    loss_fn = lambda out, b: F.cross_entropy(out, b[1])  # noqa: E731
    before = model_cost(model, (x[:1],)).flops
    for method in ("magnitude", "activation", "taylor"):
        scores = score_units(analysis, method, batches, loss_fn)
        plan, kept = one_shot_plan(analysis, scores, resolution, target=0.5)
        pruned = G.rewrite(analysis, plan)
        measured = model_cost(pruned, (x[:1],)).flops / before
        assert abs(kept - 0.5) <= 0.02 and measured == pytest.approx(kept, rel=1e-6), method


def test_bad_requests_are_one_clear_error():
    analysis = G.analyze(MLP(), torch.randn(2, 4))
    with pytest.raises(ImportanceError, match="unknown importance method 'fisher'"):
        score_units(analysis, "fisher")
    with pytest.raises(ImportanceError, match="needs batches"):
        score_units(analysis, "activation")
    with pytest.raises(ImportanceError, match="needs loss_fn"):
        score_units(analysis, "taylor", [torch.randn(2, 4)])
    with pytest.raises(ImportanceError, match="empty"):
        score_units(analysis, "activation", [])
    resolution = resolve(Policy.default(), analysis.groups, analysis.blocks)
    with pytest.raises(ImportanceError, match="no gated group"):
        one_shot_plan(analysis, Scores("depth"), resolution)


def test_init_gates_starts_the_gates_ranked_by_the_policys_importance():
    from gdp_graph.importance import init_gates

    torch.manual_seed(0)
    model = ConvNet()
    with torch.no_grad():
        model.conv1.weight[5].zero_(), model.conv1.bias[5].zero_(), model.bn1.weight[5].zero_()
    x = torch.randn(2, 3, 8, 8)
    data = Policy.default().to_dict()
    data["regularizer"]["init"] = "uniform"
    uniform = G.attach(model, policy_from_dict(data), example_inputs=x, total_steps=10)
    assert init_gates(uniform) is None and len(set(uniform.bank._theta().tolist())) == 1
    data["regularizer"]["init"] = "taylor"
    with pytest.raises(ImportanceError, match="pass batches"):
        init_gates(G.attach(model, policy_from_dict(data), example_inputs=x, total_steps=10))
    data["regularizer"]["init"] = "magnitude"  # data free: attach() applies it already
    gated = G.attach(model, policy_from_dict(data), example_inputs=x, total_steps=10)
    assert int(gated.bank.group_theta[str(_hidden_group(gated.analysis, "conv1").id)].detach().argmin()) == 5
    scores = init_gates(gated)
    gid = _hidden_group(gated.analysis, "conv1").id
    theta = gated.bank.group_theta[str(gid)].detach()
    assert scores is not None and scores.method == "magnitude"
    assert int(theta.argmin()) == 5 and float(theta.max()) == pytest.approx(gated.bank.theta_start)


def test_a_data_scored_start_never_applied_warns_at_the_first_step_and_only_then():
    from gdp_graph.gates.model import GateInitWarning
    from gdp_graph.importance import init_gates

    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(2, 3, 8, 8)
    data = Policy.default().to_dict()
    data["regularizer"]["init"] = "activation"
    forgotten = G.attach(model, policy_from_dict(data), example_inputs=x, total_steps=10)
    assert forgotten.init_pending == "activation"
    with pytest.warns(GateInitWarning, match="init_gates"):
        forgotten.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GateInitWarning)
        forgotten.step()  # once per model
        applied = G.attach(model, policy_from_dict(data), example_inputs=x, total_steps=10)
        init_gates(applied, [(x, None)])
        assert applied.init_pending is None
        applied.step()
        data["regularizer"]["init"] = "magnitude"  # attach() applies it: nothing pending
        assert G.attach(model, policy_from_dict(data), example_inputs=x, total_steps=10).init_pending is None
