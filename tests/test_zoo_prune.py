"""Every reference architecture: trace, group, random prune, rewrite, verify, save, export."""

from __future__ import annotations

import copy
import importlib
import sys

import pytest
import torch

import gdp_graph as G
from gdp_graph.graph.cost import count_params
from gdp_graph.graph.parametrized import folded
from gdp_graph.prune.export import export_source, load, save
from tests.zoo import ZOO, ZOO_TRACEABLE

RATIOS = (0.2, 0.5)
SEEDS = (0, 1)


@pytest.fixture
def analyses(zoo_analysis):
    return zoo_analysis


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("seed", SEEDS)
def test_random_prune_is_exact(analyses, name, ratio, seed):
    model, inputs, analysis = analyses(name)
    assert analysis.prunable_groups(), f"{name}: no prunable group"
    plan = G.random_plan(analysis, ratio, seed=seed, block_ratio=0.5 if seed else None)
    pruned = G.rewrite(analysis, plan)
    result = G.verify(analysis, plan, pruned)
    assert result.ok, f"{name}: {result}"
    assert result.max_rel_diff <= 1e-4
    assert count_params(pruned) < count_params(model), f"{name}: no parameter removed"


@pytest.mark.parametrize("name", sorted(ZOO_TRACEABLE))
def test_save_load_and_standalone_export(analyses, name, tmp_path):
    model, inputs, analysis = analyses(name)
    plan = G.random_plan(analysis, 0.3, seed=0, block_ratio=0.5)
    pruned = G.rewrite(analysis, plan, keep_class=False)  # the GraphModule's own source is under test
    with torch.no_grad():
        expected = pruned(*inputs)
    save(pruned, tmp_path / "pruned.pt")
    reloaded = load(tmp_path / "pruned.pt")
    with torch.no_grad():
        assert torch.equal(reloaded(*inputs), expected)
    package = f"exported_{name}"
    export_source(pruned, tmp_path / package)
    sys.path.insert(0, str(tmp_path))
    try:
        exported = importlib.import_module(package).PrunedModel().eval()
        with torch.no_grad():
            assert torch.equal(exported(*inputs), expected)
        assert set(exported.state_dict()) == set(folded(pruned).state_dict())  # weight_norm: plain weights
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(package, None)


def test_surviving_layers_keep_their_names(analyses):
    model, inputs, analysis = analyses("resnet_basic")
    pruned = G.rewrite(analysis, G.random_plan(analysis, 0.5, seed=3))
    original = model.state_dict()
    for key, value in pruned.state_dict().items():
        assert key in original, key
        assert value.dim() == original[key].dim()


def test_user_model_is_never_mutated():
    model, inputs = ZOO["mobilenetv2"]()
    before = copy.deepcopy(model.state_dict())
    model.train()
    analysis = G.analyze(model, inputs)
    G.rewrite(analysis, G.random_plan(analysis, 0.5, seed=0, block_ratio=1.0))
    assert model.training, "analyze must not switch the user's model to eval"
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_verify_catches_a_wrong_model(analyses):
    _, inputs, analysis = analyses("resnet_basic")
    plan = G.random_plan(analysis, 0.3, seed=0)
    pruned = G.rewrite(analysis, plan)
    with torch.no_grad():
        next(p for n, p in pruned.named_parameters() if n.endswith("conv1.weight")).mul_(1.5)
    assert not G.verify(analysis, plan, pruned).ok


def test_inexact_groups_are_frozen_unless_allowed(analyses):
    _, _, analysis = analyses("convnext")
    inexact = [g for g in analysis.groups if not g.exact]
    assert inexact and all("LayerNorm" in r or "layer_norm" in r or "mean" in r for g in inexact for r in g.inexact_reasons)
    gid = inexact[0].id
    with pytest.raises(G.PlanError, match="inexact"):
        G.PruningPlan(keep={gid: (0, 1)}).validate(analysis)
    plan = G.random_plan(analysis, 0.3, seed=0, allow_inexact=True)
    assert any(not analysis.groups[g].exact for g in plan.keep)
    result = G.verify(analysis, plan, G.rewrite(analysis, plan))
    assert result.max_abs_diff > 0 and torch.isfinite(torch.tensor(result.max_abs_diff))


def test_frozen_units_are_refused(analyses):
    _, _, analysis = analyses("vgg")
    out_group = next(g for g in analysis.groups if "reaches the model output" in g.describe_frozen())
    with pytest.raises(G.PlanError, match="frozen"):
        G.PruningPlan(keep={out_group.id: (0,)}).validate(analysis)
