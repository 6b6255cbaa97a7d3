"""The two model styles a hold-out run found failing (tests/zoo/levit.py, tests/zoo/nfnet.py),
and the rules they needed: ``flatten``'s arguments are dims, never sizes; ``unflatten``'s sizes
follow the kept counts (method, function and ``nn.Unflatten``); ``F.conv2d`` with a computed
weight is a convolution; batch statistics over a weight's fan-in make its groups inexact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gdp_graph as G
from tests.zoo import ZOO


def test_levit_prunes_heads_and_channels_exactly():
    model, inputs = ZOO["levit"]()
    analysis = G.analyze(model, inputs)
    heads = [g for g in analysis.prunable_groups() if g.unit == "head"]
    assert len(heads) == 3 and any(m.target.endswith("attention_biases") for g in heads for m in g.members)
    plan = G.random_plan(analysis, 0.5, seed=1, block_ratio=0.5)
    assert {g.id for g in heads} <= set(plan.keep) and plan.removed_blocks
    pruned = G.rewrite(analysis, plan, keep_class=False)
    result = G.verify(analysis, plan, pruned)
    assert result.ok, result
    flattens = [n for n in pruned.graph.nodes if n.op == "call_method" and n.target == "flatten"]
    assert flattens and all(n.args[1:] in ((0, 1), (2,)) for n in flattens), [n.args for n in flattens]


def test_levit_frozen_groups_name_the_bias_table_index():
    model, inputs = ZOO["levit"]()
    analysis = G.analyze(model, inputs)
    frozen = [g for g in analysis.groups if not g.prunable and any("attention_biases" in m.target for m in g.members)]
    assert len(frozen) == 3  # the bias tables' position dims, read through an index tensor
    assert all("getitem" in g.describe_frozen() for g in frozen)


def test_nfnet_groups_read_by_a_standardized_conv_are_inexact_with_the_op_named():
    model, inputs = ZOO["nfnet"]()
    analysis = G.analyze(model, inputs)
    inexact = [g for g in analysis.groups if not g.exact]
    assert len(inexact) >= 10
    for g in inexact:
        reason = "; ".join(g.inexact_reasons)
        assert "batch_norm with training=True" in reason and "node 'batch_norm" in reason, reason
    plan = G.random_plan(analysis, 0.3, seed=0)
    assert plan.keep, "the final conv's channels (read by the classifier) are exact and prunable"
    assert G.verify(analysis, plan, G.rewrite(analysis, plan, keep_class=False)).ok
    # removing a standardized conv's input channels changes its weights: verify says so
    loose = G.random_plan(analysis, 0.3, seed=0, allow_inexact=True)
    assert not G.verify(analysis, loose, G.rewrite(analysis, loose, keep_class=False, check=False)).ok


class Flattens(nn.Module):
    """Linear + BatchNorm1d over flattened tokens, method and module unflatten of the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.unflatten = nn.Unflatten(2, (2, 4))
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        y = self.bn(y.flatten(0, 1)).reshape_as(y)
        a = self.unflatten(y).flatten(2)
        b = y.unflatten(2, (2, 4)).flatten(2, 3)
        return self.out(torch.relu(a + b))


class StdConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(4, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(torch.relu(self.conv(x)), self.weight * 2.0).mean((2, 3))


@pytest.mark.parametrize("make, inputs", [(Flattens, (torch.randn(2, 5, 6),)), (StdConv, (torch.randn(2, 3, 6, 6),))])
def test_flatten_unflatten_and_functional_conv_prune_exactly(make, inputs):
    torch.manual_seed(0)
    model = make().eval()
    analysis = G.analyze(model, inputs)
    assert analysis.prunable_groups()
    plan = G.random_plan(analysis, 0.5, seed=0)
    assert plan.keep
    pruned = G.rewrite(analysis, plan, keep_class=False)
    assert G.verify(analysis, plan, pruned).ok
