"""``block_level: inner`` (the GDP paper's blocks): a residual block without a gate of its own,
removed (its constant term kept) when every group inside it loses all its units. Checked on the
project's CIFAR ResNet-20 (one inner group per block) and a bottleneck ResNet (two per block):
the plans from gates and from a budget, the exactness and FLOPs of the rewritten model, the
protection during training, and the policy's reasons."""

from __future__ import annotations

import warnings

import pytest
import torch

import gdp_graph as G
from gdp_graph.gates.attach import attach
from gdp_graph.gates.finalize import finalize
from gdp_graph.gates.selection import group_limit, plan_for_budget, plan_fraction, plan_from_gates
from gdp_graph.graph.cost import CostModel, model_cost
from gdp_graph.policy import PolicyWarning, Resolution, policy_from_dict, resolve
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
from tests.zoo import ZOO, randomize_norms

INNER = {"version": 1, "defaults": {"block_level": "inner"}}
MODELS = ("cifar_resnet20", "resnet_bottleneck")


def _cifar_resnet20():
    torch.manual_seed(0)
    model = randomize_norms(cifar_resnet(20)).eval()  # non-zero BN biases: a real constant term
    return model, (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


FACTORIES = {"cifar_resnet20": _cifar_resnet20, "resnet_bottleneck": ZOO["resnet_bottleneck"]}


@pytest.fixture(scope="module")
def setups():
    cache: dict = {}

    def get(name: str, policy: dict = INNER):
        key = (name, repr(policy))
        if key not in cache:
            if name not in cache:
                model, x = FACTORIES[name]()
                cache[name] = (model, x, G.analyze(model, x))
            model, x, a = cache[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PolicyWarning)
                cache[key] = (model, x, a, resolve(policy_from_dict(policy), a.groups, a.blocks))
        return cache[key]

    return get


def _ones(a, res: Resolution) -> dict[int, torch.Tensor]:
    return {g: torch.ones(a.groups[g].size) for g in res.gated_groups()}


def _check_exact_and_flops(a, x, plan: PruningPlan) -> None:
    """The rewritten model equals the gated reference, and its FlopCounterMode count is the
    fraction the cost model gives the plan."""
    pruned = G.rewrite(a, plan)
    result = G.verify(a, plan, pruned)
    assert result.ok and result.max_rel_diff <= 1e-5, result
    measured = model_cost(pruned, x).flops / model_cost(a.traced.gm, x).flops
    assert plan_fraction(CostModel(a), plan, "flops") == pytest.approx(measured, rel=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_every_prunable_block_has_its_inner_groups(setups, name):
    _, _, a, res = setups(name)
    expected = 1 if name == "cifar_resnet20" else 2
    assert sorted(res.inner_blocks) == [b.id for b in a.blocks]
    assert all(len(inner) == expected for inner in res.inner_blocks.values())
    assert res.gated_blocks() == []  # no gate of their own
    reasons = {i: r for k, i, r in res.ungated() if k == "block"}
    assert all(r.startswith("no block gate: removed when its inner groups") and "block_level inner" in r
               for r in reasons.values())


def _inner_zeroed(a, res, inner):
    """Every gate at 1 but those of the block's inner groups, at 0."""
    gates = _ones(a, res)
    for gid in inner:
        gates[gid] = torch.zeros(a.groups[gid].size)
    return gates


@pytest.mark.parametrize("name", MODELS)
def test_all_inner_gates_at_zero_remove_the_block(setups, name):
    _model, x, a, res = setups(name)
    bid, inner = sorted(res.inner_blocks.items())[1]
    gates = _inner_zeroed(a, res, inner)
    plan = plan_from_gates(a, gates, {}, res, 1e-6)
    assert plan.removed_blocks == {bid}
    assert not set(plan.keep) & set(inner)  # the groups go with the block, not as a cut
    _check_exact_and_flops(a, x, plan)


@pytest.mark.parametrize("name", MODELS)
def test_one_inner_gate_above_threshold_keeps_the_block(setups, name):
    _model, x, a, res = setups(name)
    _bid, inner = sorted(res.inner_blocks.items())[1]
    gates = _inner_zeroed(a, res, inner)
    gates[inner[-1]][3] = 0.5
    plan = plan_from_gates(a, gates, {}, res, 1e-6)
    assert plan.removed_blocks == frozenset()
    for gid in inner:  # the groups follow their normal limits: the largest cut they allow
        size = a.groups[gid].size
        candidates = size - (1 if gid == inner[-1] else 0)
        assert len(plan.keep[gid]) == size - group_limit(a, res, gid, candidates) >= 1
    assert 3 in plan.keep[inner[-1]]
    _check_exact_and_flops(a, x, plan)


def test_one_emptied_group_of_a_bottleneck_is_not_enough(setups):
    _, _, a, res = setups("resnet_bottleneck")
    _bid, inner = sorted(res.inner_blocks.items())[0]
    gates = _ones(a, res)
    gates[inner[0]] = torch.zeros(a.groups[inner[0]].size)  # only the first of two inner groups
    plan = plan_from_gates(a, gates, {}, res, 1e-6)
    assert plan.removed_blocks == frozenset() and set(plan.keep) == {inner[0]}


@pytest.mark.parametrize("name", MODELS)
def test_other_levels_ignore_emptied_inner_groups(setups, name):
    _, _, a, res_none = setups(name, {"version": 1})
    _, _, _, res_block = setups(name, {"version": 1, "defaults": {"block_level": "block"}})
    for res, blocks in ((res_none, {}), (res_block, {b: torch.tensor(1.0) for b in res_block.gated_blocks()})):
        assert res.inner_blocks == {}
        gates = {g: torch.zeros(a.groups[g].size) for g in res.gated_groups()}
        plan = plan_from_gates(a, gates, blocks, res, 1e-6)
        assert plan.removed_blocks == frozenset()  # every group cut to its limit instead
        assert all(len(kept) >= 1 for kept in plan.keep.values())


def _low_block_scores(a, res: Resolution, low: list[int], seed: int = 0) -> dict[int, torch.Tensor]:
    """Scores in [1, 2) everywhere, in [0, 0.1) in the inner groups of the blocks ``low``."""
    gen = torch.Generator().manual_seed(seed)
    scores = {g: 1.0 + torch.rand(a.groups[g].size, generator=gen) for g in res.gated_groups()}
    for bid in low:
        for gid in res.inner_blocks[bid]:
            scores[gid] = 0.1 * torch.rand(a.groups[gid].size, generator=gen)
    return scores


@pytest.mark.parametrize("name", MODELS)
def test_budget_removes_the_blocks_whose_inner_scores_are_lowest(setups, name):
    _model, x, a, res = setups(name)
    low = sorted(res.inner_blocks)[1:3]
    cost = CostModel(a)
    plan, fraction = plan_for_budget(a, cost, res, _low_block_scores(a, res, low), 0.6)
    assert plan.removed_blocks == set(low)
    assert not set(plan.keep) & {g for b in low for g in res.inner_blocks[b]}
    assert fraction == plan_fraction(cost, plan, "flops")
    _check_exact_and_flops(a, x, plan)


@pytest.mark.parametrize("name", MODELS)
def test_normalized_budget_ranks_a_block_by_its_normalized_scores(setups, name):
    """Block ``spread`` has the smallest raw scores but, divided by their mean, the largest
    (up to ~2); block ``flat`` has large equal scores, 1 once normalized, below the others'
    1.5. Raw, ``spread`` goes first; normalized, ``flat`` does."""
    _, _, a, res = setups(name)
    spread, flat = sorted(res.inner_blocks)[1:3]
    scores = {g: torch.linspace(0.5, 1.5, a.groups[g].size) for g in res.gated_groups()}
    for gid in res.inner_blocks[spread]:
        scores[gid] = torch.linspace(0.001, 0.1, a.groups[gid].size)
    for gid in res.inner_blocks[flat]:
        scores[gid] = torch.full((a.groups[gid].size,), 5.0)
    cost = CostModel(a)
    for normalize, first in ((False, spread), (True, flat)):
        for target in torch.linspace(0.95, 0.05, 19).tolist():
            plan, _ = plan_for_budget(a, cost, res, scores, target, normalize=normalize)
            if plan.removed_blocks:
                assert plan.removed_blocks == {first}, (normalize, target)
                break
        else:
            raise AssertionError(f"no block removed (normalize={normalize})")


@pytest.mark.parametrize("name", MODELS)
def test_budget_fraction_follows_the_target(setups, name):
    """The cut stays monotone with the block steps in the ranking: a larger target never keeps
    less, and each cut lands next to its target."""
    _, _, a, res = setups(name)
    scores = _low_block_scores(a, res, [], seed=3)
    cost = CostModel(a)
    fractions = [plan_for_budget(a, cost, res, scores, t)[1] for t in (0.2, 0.35, 0.5, 0.65, 0.8)]
    assert fractions == sorted(fractions)
    assert fractions[0] < 0.3 and fractions[-1] > 0.7


def test_a_block_goes_after_its_own_units(setups):
    """At a target the block's units alone (within their limits) meet, the block stays."""
    _, _, a, res = setups("cifar_resnet20")
    bid, (gid,) = sorted(res.inner_blocks.items())[-1]
    scores = _low_block_scores(a, res, [bid])
    cost = CostModel(a)
    limit = group_limit(a, res, gid, a.groups[gid].size)
    keep = tuple(sorted(torch.argsort(scores[gid], descending=True)[: a.groups[gid].size - limit].tolist()))
    cut = plan_fraction(cost, PruningPlan(keep={gid: keep}), "flops")
    plan, fraction = plan_for_budget(a, cost, res, scores, cut)
    assert plan.removed_blocks == frozenset() and plan.keep == {gid: keep} and fraction == cut
    gone = plan_fraction(cost, PruningPlan(removed_blocks=frozenset({bid})), "flops")
    assert gone < cut
    plan, fraction = plan_for_budget(a, cost, res, scores, gone + 1e-6)  # one step further: the block
    assert plan.removed_blocks == {bid} and plan.keep == {} and fraction == gone


def test_blocks_already_removed_get_no_second_step(setups):
    _, _, a, res = setups("cifar_resnet20")
    gone = frozenset(sorted(res.inner_blocks)[:1])
    plan, _ = plan_for_budget(a, CostModel(a), res, _low_block_scores(a, res, sorted(gone)), 0.6,
                              removed_blocks=gone)
    assert gone <= plan.removed_blocks and not set(plan.keep) & set(res.inner_blocks[min(gone)])


@pytest.mark.parametrize("name", MODELS)
def test_inner_groups_are_free_to_reach_zero_in_training(name):
    model, x = FACTORIES[name]()
    held = attach(model, {"version": 1}, example_inputs=x).protected()
    gated = attach(model, INNER, example_inputs=x)
    free = gated.protected()
    bank = gated.bank
    inner = {g for ids in gated.resolution.inner_blocks.values() for g in ids}
    for gid in bank.group_ids:
        span = slice(bank._offset[gid], bank._offset[gid] + gated.analysis.groups[gid].size)
        if gid in inner:
            assert held[span].any() and not free[span].any()
        else:
            assert torch.equal(held[span], free[span])


@pytest.mark.parametrize("name", MODELS)
def test_finalize_removes_the_block_the_gates_emptied(name):
    model, x = FACTORIES[name]()
    gated = attach(model, INNER, example_inputs=x)
    bid, inner = sorted(gated.resolution.inner_blocks.items())[0]
    with torch.no_grad():
        for gid in inner:
            gated.bank.group_theta[str(gid)].zero_()
    _pruned, report = finalize(gated)
    assert report.plan.removed_blocks == {bid} and report.check.max_rel_diff <= 1e-5


def test_fix_gates_cuts_an_inner_block_to_the_budget():
    model, x = _cifar_resnet20()
    gated = attach(model, {**INNER, "target": {"fraction": 0.7}}, example_inputs=x, total_steps=10)
    bid, inner = sorted(gated.resolution.inner_blocks.items())[-1]
    with torch.no_grad():
        for gid in inner:
            gated.bank.group_theta[str(gid)].mul_(0.01)
    report = gated.fix_gates()
    _pruned, final = finalize(gated)
    assert bid in final.plan.removed_blocks and final.check.ok
    assert report["fraction"] == pytest.approx(0.7, abs=0.05)


def test_reasons_say_which_inner_group_keeps_a_block():
    model, x = ZOO["resnet_bottleneck"]()
    a = G.analyze(model, x)
    policy = policy_from_dict({"version": 1, "defaults": {"block_level": "inner"},
                               "rules": [{"match": {"module": "layer1.0.conv2"}, "level": "none"}]})
    res = resolve(policy, a.groups, a.blocks)
    reasons = {i: r for k, i, r in res.ungated() if k == "block"}
    assert 0 not in res.inner_blocks and sorted(res.inner_blocks) == [1, 2, 3]
    assert reasons[0].startswith("never removed: block_level inner, but its inner group")
    assert "has no gates (level: none by rules[0]" in reasons[0]
    rule = policy_from_dict({"version": 1, "rules": [{"blocks": {"name": "layer2.*"}, "level": "inner"}]})
    res = resolve(rule, a.groups, a.blocks)
    assert sorted(res.inner_blocks) == [1, 2]
    assert {i: r for k, i, r in res.ungated() if k == "block"}[1].endswith("(level inner by rules[0] (<dict>:0))")
