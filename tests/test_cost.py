"""The cost model: measured with FlopCounterMode, predicts pruned models exactly (FLOPs)."""

from __future__ import annotations

import pytest
import torch

import gdp_graph as G
from gdp_graph.graph.cost import CostModel, count_flops, count_params, model_cost
from tests.zoo import ZOO

CNN_AND_VIT = ["vgg", "resnet_basic", "resnet_bottleneck", "resnext", "mobilenetv2", "efficientnet",
               "densenet", "inception", "shufflenetv2", "convnext", "vit", "vit_manual_attn", "swin", "unet"]


@pytest.mark.parametrize("name", CNN_AND_VIT)
def test_plan_cost_matches_the_pruned_model(name):
    model, inputs = ZOO[name]()
    analysis = G.analyze(model, inputs)
    cost = CostModel(analysis)
    assert cost.total.flops == pytest.approx(count_flops(model, inputs), rel=1e-9)
    assert cost.total.params == count_params(model)
    plan = G.random_plan(analysis, 0.4, seed=1, block_ratio=0.5)
    actual = model_cost(G.rewrite(analysis, plan), inputs)
    predicted = cost.plan_cost(plan.keep, plan.removed_blocks)
    assert predicted.flops == pytest.approx(actual.flops, rel=1e-6)
    # parameters: bilinear in the neighbouring groups, so a bias is slightly undercounted
    assert predicted.params == pytest.approx(actual.params, rel=0.02)


def test_soft_cost_is_differentiable_and_bilinear():
    model, inputs = ZOO["vgg"]()
    analysis = G.analyze(model, inputs)
    cost = CostModel(analysis)
    gid = analysis.prunable_groups()[1].id
    gates = {gid: torch.full((analysis.groups[gid].size,), 0.5, requires_grad=True)}
    flops, _ = cost.evaluate(cost.gate_vector(gates))
    flops.backward()
    assert gates[gid].grad is not None and bool((gates[gid].grad > 0).all())
    half = float(flops)
    full, _ = cost.evaluate(cost.gate_vector({}))
    zero, _ = cost.evaluate(cost.gate_vector({gid: torch.zeros(analysis.groups[gid].size)}))
    # linear in one group's gate mean when the neighbours are fixed
    assert half == pytest.approx((float(full) + float(zero)) / 2, rel=1e-6)


def test_unit_costs_are_positive_for_prunable_groups():
    model, inputs = ZOO["resnet_basic"]()
    analysis = G.analyze(model, inputs)
    costs = CostModel(analysis).unit_costs()
    for g in analysis.prunable_groups():
        assert costs[g.id].flops > 0 and costs[g.id].params > 0
