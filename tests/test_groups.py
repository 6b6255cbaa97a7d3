"""The channel groups found on reference architectures have the structure the papers imply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gdp_graph as G
from tests.zoo import ZOO


def _analyze(name):
    model, inputs = ZOO[name]()
    return model, G.analyze(model, inputs)


def _group_with(analysis, module):
    return [g for g in analysis.groups if module in g.modules]


def test_residual_stream_is_one_group():
    _, a = _analyze("resnet_basic")
    stream = _group_with(a, "layer1.0.bn2")
    assert len(stream) == 1
    g = stream[0]
    assert "residual" in g.couplings
    # every block of the stage writes into the same stream, and the next stage's convs read it
    assert {"layer1.0.bn2", "layer1.1.bn2", "layer1.0.conv1", "layer1.1.conv1"} <= set(g.modules)
    assert g.prunable and g.exact


def test_depthwise_conv_follows_its_input_and_is_not_a_gate_site():
    _, a = _analyze("mobilenetv2")
    dw_groups = [g for g in a.groups if "depthwise" in g.couplings]
    assert dw_groups
    for g in dw_groups:
        site_nodes = {s.node for s in g.gate_sites}
        dw_nodes = {m.node for m in g.members if m.role == "pass" and m.dim == 1}
        assert dw_nodes and not (site_nodes & dw_nodes)


def test_attention_heads_are_the_unit():
    model, a = _analyze("vit")
    heads = [g for g in a.groups if g.unit == "head"]
    n_heads = model.blocks[0].attn.num_heads
    assert len(heads) == len(model.blocks)
    assert all(g.size == n_heads and g.prunable for g in heads)
    assert all("attention" in g.couplings for g in heads)


def test_grouped_conv_units_are_conv_groups():
    model, a = _analyze("resnext")
    g = [g for g in a.groups if "grouped" in g.couplings]
    assert g and all(x.unit == "conv-group" for x in g)


def test_concatenation_keeps_inputs_separate():
    _, a = _analyze("inception")
    concat = [g for g in a.groups if "concat" in g.couplings]
    assert len(concat) >= 4  # each branch of an inception module is its own group


def test_layernorm_over_channels_is_inexact_and_frozen():
    _, a = _analyze("vit")
    stream = [g for g in a.groups if "norm" in g.couplings and "residual" in g.couplings]
    assert stream and all(not g.exact for g in stream)
    assert all(g not in a.prunable_groups() for g in stream)


def test_untraceable_submodule_becomes_an_opaque_leaf():
    _, a = _analyze("untraceable")
    assert [o.module for o in a.opaque] == ["gate_block"]
    assert "gate_block" in a.opaque[0].reason or a.opaque[0].reason
    touching = [g for g in a.groups if any("opaque module 'gate_block'" in r for r in g.frozen_reasons)]
    assert touching and all(g.fully_frozen for g in touching)


def test_removable_blocks_found_with_identity_shortcuts():
    _, a = _analyze("resnet_basic")
    names = [b.name for b in a.blocks]
    assert "layer1.0" in names and "layer1.1" in names
    assert all(b.prunable for b in a.blocks)
    identity = [b for b in a.blocks if b.shortcut_is_identity]
    assert identity


def test_unknown_op_freezes_with_its_name():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(torch.special.i0(self.conv(x)))

    a = G.analyze(Odd(), torch.randn(1, 3, 8, 8))
    g = _group_with(a, "conv")[0]
    assert g.fully_frozen and "no rule for" in g.describe_frozen()


@pytest.mark.parametrize("bad", ["not a model", None])
def test_analyze_rejects_non_modules(bad):
    with pytest.raises(G.TraceError):
        G.analyze(bad, torch.randn(1, 3, 8, 8))


def test_wrong_input_shape_is_a_clear_error():
    model, _ = ZOO["vgg"]()
    with pytest.raises(G.TraceError, match="does not run on example inputs of shape"):
        G.analyze(model, torch.randn(1, 5, 32, 32))


def test_distinct_rows_partition_long_rows_as_a_row_wise_unique_does(monkeypatch):
    """Rows too long for one integer are hashed, and the hash checked against the rows: the
    same partition as ``torch.unique(rows, dim=0)``, also when two different rows share a hash."""
    from gdp_graph.graph import grouping

    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 5, (200, 40), generator=g)
    rows[100:] = rows[:100]  # every row twice
    expected = torch.unique(rows, dim=0, return_inverse=True)[1]

    def same_partition(which: torch.Tensor) -> bool:
        return bool(((which[:, None] == which[None, :]) == (expected[:, None] == expected[None, :])).all())

    count, which = grouping._distinct_rows(rows, 5)
    assert count == 100 and same_partition(which)
    real_unique = torch.unique

    def colliding(x, *args, **kwargs):  # every hash equal: the check must catch it
        if x.dim() == 1 and kwargs.get("return_inverse") and x.numel() == rows.shape[0]:
            x = torch.zeros_like(x)
        return real_unique(x, *args, **kwargs)

    monkeypatch.setattr(grouping.torch, "unique", colliding)
    count, which = grouping._distinct_rows(rows, 5)
    assert count == 100 and same_partition(which)
