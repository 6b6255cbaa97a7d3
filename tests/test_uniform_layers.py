"""``uniform: true``: repeated layers keep one unit count (each still picks which units), so the
pruned shapes fit a standard config. Checked on a tiny Hugging Face Llama (GQA: a head unit is
a key/value head with its query heads) and the zoo ViT, from gates and from a budget, with the
rewritten models exact; and the policy errors of a non-boolean value and of a set mixing sizes."""

from __future__ import annotations

import warnings

import pytest
import torch

import gdp_graph as G
from gdp_graph.gates.attach import attach
from gdp_graph.gates.selection import plan_for_budget, plan_from_gates
from gdp_graph.graph.cost import CostModel
from gdp_graph.policy import PolicyError, PolicyWarning, load_policy, policy_from_dict, resolve
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
from tests.zoo import ZOO

T = pytest.importorskip("transformers")

MLP_GLOB = {"llama": "*.mlp.down_proj", "vit": "*.mlp.fc1"}


def _llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    return T.LlamaForCausalLM(cfg).eval(), {"input_ids": ids, "use_cache": False}


def _policy(name: str, uniform: bool = True, **extra) -> dict:
    rules = [{"match": {"unit": "head"}, "uniform": uniform},
             {"match": {"module": MLP_GLOB[name]}, "uniform": uniform}]
    return {"version": 1, "rules": rules, **extra}


@pytest.fixture(scope="module")
def setups():
    cache: dict = {}

    def get(name: str, uniform: bool = True):
        if name not in cache:
            model, x = _llama() if name == "llama" else ZOO[name]()
            cache[name] = (model, x, G.analyze(model, x))
        model, x, a = cache[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PolicyWarning)
            return model, x, a, resolve(policy_from_dict(_policy(name, uniform)), a.groups, a.blocks)

    return get


def _kept(a, plan, gids) -> list[int]:
    return [len(plan.keep.get(g, range(a.groups[g].size))) for g in gids]


@pytest.mark.parametrize("name", ["llama", "vit"])
def test_one_set_per_repeated_layer_kind(setups, name):
    _, _, a, res = setups(name)
    layers = 3 if name == "llama" else 2
    assert len(res.uniform_sets) == 2 and all(len(s) == layers for s in res.uniform_sets)
    assert {a.groups[s[0]].unit for s in res.uniform_sets} == {"head", "channel"}
    assert all(len({a.groups[g].size for g in s}) == 1 for s in res.uniform_sets)
    assert setups(name, uniform=False)[3].uniform_sets == ()


@pytest.mark.parametrize("name", ["llama", "vit"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gates_keep_the_count_the_neediest_member_needs(setups, name, seed):
    _, _, a, res = setups(name)
    _, _, _, free = setups(name, uniform=False)
    gen = torch.Generator().manual_seed(seed)
    gates = {g: torch.rand(a.groups[g].size, generator=gen) for g in res.gated_groups()}
    plan = plan_from_gates(a, gates, {}, res, 0.5)
    alone = plan_from_gates(a, gates, {}, free, 0.5)
    for members in res.uniform_sets:
        kept = _kept(a, plan, members)
        assert len(set(kept)) == 1 and kept[0] == max(_kept(a, alone, members))
        for g in members:  # each member removes its own smallest gates, all <= the threshold
            removed = set(range(a.groups[g].size)) - set(plan.keep.get(g, range(a.groups[g].size)))
            kept_gates = [float(gates[g][u]) for u in plan.keep.get(g, ())]
            assert all(float(gates[g][u]) <= 0.5 for u in removed)
            assert not removed or max(float(gates[g][u]) for u in removed) <= min(kept_gates)
    result = G.verify(a, plan, G.rewrite(a, plan, keep_class=False))
    assert result.ok and result.max_rel_diff <= 1e-5, result


@pytest.mark.parametrize("name", ["llama", "vit"])
@pytest.mark.parametrize("target", [0.4, 0.7])
def test_budget_cuts_every_layer_alike(setups, name, target):
    _, _, a, res = setups(name)
    gen = torch.Generator().manual_seed(int(target * 10))
    scores = {g: torch.rand(a.groups[g].size, generator=gen) for g in res.gated_groups()}
    plan, fraction = plan_for_budget(a, CostModel(a), res, scores, target)
    assert abs(fraction - target) < 0.15
    for members in res.uniform_sets:
        assert len(set(_kept(a, plan, members))) == 1
    assert any(g in plan.keep for members in res.uniform_sets for g in members)
    result = G.verify(a, plan, G.rewrite(a, plan, keep_class=False))
    assert result.ok and result.max_rel_diff <= 1e-5, result


def test_a_slice_takes_the_lowest_unit_of_every_layer(setups):
    """Layer 0's MLP units score lowest: cut alone it loses them all (to its limit) first;
    uniform, every layer loses the same count, each its own lowest units."""
    _, _, a, res = setups("vit")
    _, _, _, free = setups("vit", uniform=False)
    mlp = next(s for s in res.uniform_sets if a.groups[s[0]].unit == "channel")
    scores = {g: 1.0 + torch.rand(a.groups[g].size, generator=torch.Generator().manual_seed(g))
              for g in res.gated_groups()}
    scores[mlp[0]] = scores[mlp[0]] - 1.0
    cost = CostModel(a)
    alone, _ = plan_for_budget(a, cost, free, scores, 0.8)
    assert len(set(_kept(a, alone, mlp))) > 1
    plan, _ = plan_for_budget(a, cost, res, scores, 0.8)
    kept = _kept(a, plan, mlp)
    assert len(set(kept)) == 1 and kept[0] < a.groups[mlp[0]].size
    for g in mlp:
        lowest = torch.argsort(scores[g], stable=True)[: a.groups[g].size - kept[0]].tolist()
        assert set(plan.keep[g]) == set(range(a.groups[g].size)) - set(lowest)


def test_uniform_llama_fits_a_standard_config(setups, tmp_path):
    model, x, a, res = setups("llama")
    gen = torch.Generator().manual_seed(5)
    scores = {g: torch.rand(a.groups[g].size, generator=gen) for g in res.gated_groups()}
    plan, _ = plan_for_budget(a, CostModel(a), res, scores, 0.5)
    heads, mlp = sorted(res.uniform_sets, key=lambda s: a.groups[s[0]].size)
    pruned_applied = G.apply_plan(a, plan, keep_class=True)
    pruned = pruned_applied.model
    assert type(pruned) is type(model) and pruned_applied.verify.ok, pruned_applied.verify
    assert pruned.config.intermediate_size == _kept(a, plan, mlp)[0] < 48
    assert pruned.config.num_key_value_heads == _kept(a, plan, heads)[0]
    pruned.save_pretrained(tmp_path)
    reloaded = T.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**x).logits, pruned(**x).logits, atol=1e-6)


def test_common_count_honours_every_members_round_to(setups):
    """Alone, 0 gates cut ViT's 128-wide MLPs to 16 (round_to 8) and 15 (round_to 3); together
    the count must be a multiple of both: 24."""
    _, _, a, _ = setups("vit")
    rules = [{"match": {"module": "*.mlp.fc1"}, "uniform": True},
             {"match": {"module": "blocks.0.mlp.fc1"}, "round_to": 8},
             {"match": {"module": "blocks.1.mlp.fc1"}, "round_to": 3}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyWarning)
        res = resolve(policy_from_dict({"version": 1, "rules": rules}), a.groups, a.blocks)
    (mlp,) = res.uniform_sets
    zeros = {g: torch.zeros(a.groups[g].size) for g in res.gated_groups()}
    assert _kept(a, plan_from_gates(a, zeros, {}, res, 1e-6), mlp) == [24, 24]
    plan, _ = plan_for_budget(a, CostModel(a), res, zeros, 0.05)
    assert _kept(a, plan, mlp) == [24, 24]


def test_a_member_inside_a_removed_block_leaves_the_set(setups):
    _, _, a, res = setups("vit")
    mlp = next(s for s in res.uniform_sets if a.groups[s[0]].unit == "channel")
    gone = frozenset({a.groups[mlp[0]].block})
    scores = {g: torch.rand(a.groups[g].size, generator=torch.Generator().manual_seed(1)) for g in res.gated_groups()}
    plan, _ = plan_for_budget(a, CostModel(a), res, scores, 0.5, removed_blocks=gone)
    assert mlp[0] not in plan.keep and mlp[1] in plan.keep  # the survivor is cut on its own
    result = G.verify(a, plan, G.rewrite(a, plan, keep_class=False))
    assert result.ok, result


def test_invalid_uniform_value_is_one_located_error():
    text = "version: 1\nrules:\n  - match: {unit: head}\n    uniform: 1\n"
    with pytest.raises(PolicyError) as info:
        load_policy(text, name="p.yaml")
    assert str(info.value).splitlines() == [
        "p.yaml:4:14: rules[0].uniform: expected a boolean (true or false), got an integer (1)"]


def test_a_set_mixing_sizes_is_one_error_at_the_rule():
    model, x = cifar_resnet(20), torch.randn(2, 3, 32, 32)
    a = G.analyze(model, x)
    text = "version: 1\nrules:\n  - name: all-convs\n    match: {type: Conv2d}\n    uniform: true\n"
    with pytest.raises(PolicyError) as info:
        resolve(load_policy(text, name="p.yaml"), a.groups, a.blocks)
    (line,) = str(info.value).splitlines()
    assert line.startswith("p.yaml:3:5: rules[0] 'all-convs': uniform: true ties gated channel groups of "
                           "different sizes (size 16: groups 0, 1, 2, 3; size 32: groups 4, 5, 6, 7; "
                           "size 64: groups 8, 9, 10, 11)"), line
    assert "uniform: false" in line
    with pytest.raises(PolicyError, match=r"^<dict>:0:0: defaults.uniform: uniform: true ties"):
        attach(model, {"version": 1, "defaults": {"uniform": True}}, example_inputs=x)

    def stages(module: str) -> str:
        rules = "".join(f"  - match: {{module: 'layer{i}.*.{module}'}}\n    uniform: true\n" for i in (1, 2, 3))
        return "version: 1\nrules:\n" + rules

    # one rule per stage is one set per stage: bn1 belongs to the inner groups only ...
    res = resolve(load_policy(stages("bn1"), name="p.yaml"), a.groups, a.blocks)
    assert res.uniform_sets == ((1, 2, 3), (5, 6, 7), (9, 10, 11))
    # ... while conv1 also consumes the stream of the stage before: two errors, one per rule
    with pytest.raises(PolicyError) as info:
        resolve(load_policy(stages("conv1"), name="p.yaml"), a.groups, a.blocks)
    assert [line.split(" uniform")[0] for line in str(info.value).splitlines()] == [
        "p.yaml:5:5: rules[1]:", "p.yaml:7:5: rules[2]:"]


def test_gated_training_cuts_and_finalizes_uniformly():
    """The cut at fix_at (a budget ranked by theta) and finalize (from the gates) both keep one
    count per set, and the finalized model reproduces the gated one."""
    from gdp_graph.gates.finalize import finalize

    model, x = _llama()
    gated = attach(model, _policy("llama", target={"fraction": 0.6}), example_inputs=x, total_steps=10)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for theta in gated.bank.group_theta.values():
            theta.mul_(torch.rand(theta.shape, generator=gen) + 0.01)
    gated.fix_gates()
    a, sets = gated.analysis, gated.resolution.uniform_sets
    dead = {g: int((gate == 0).sum()) for g, gate in gated.group_gates().items()}
    assert sets and all(len({dead[g] for g in s}) == 1 for s in sets) and any(dead[s[0]] for s in sets)
    _pruned, report = finalize(gated)
    assert all(len(set(_kept(a, report.plan, s))) == 1 for s in sets)
    assert report.check.max_rel_diff <= 1e-5
