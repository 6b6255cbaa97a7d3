"""Models written the way torchvision and timm write them keep their heads, residual streams
and blocks prunable (tests/zoo/library_styles.py)."""

from __future__ import annotations

import pytest
import torch

import gdp_graph as G


@pytest.fixture
def analyses(zoo_analysis):
    return lambda name: zoo_analysis(name)[2]


def test_tuple_unpacked_multihead_attention_is_lowered_to_prunable_heads(analyses):
    a = analyses("vit_torchvision")
    heads = [g for g in a.groups if g.unit == "head"]
    assert len(heads) == 2 and all(g.size == 4 and g.prunable for g in heads)
    assert not any(n.op == "call_module" and "self_attention" in str(n.target) for n in a.traced.gm.graph.nodes)
    plan = G.PruningPlan(keep={heads[0].id: (1, 3), heads[1].id: (0,)})
    result = G.verify(a, plan, G.rewrite(a, plan))
    assert result.ok and result.max_rel_diff < 1e-5


def test_stochastic_depth_passes_channels_in_eval(analyses):
    a = analyses("efficientnet_stochastic_depth")
    reasons = " ".join(g.describe_frozen() for g in a.groups)
    assert "stochastic_depth" not in reasons
    assert sum(1 for g in a.groups if "residual" in g.couplings and g.prunable) >= 2
    assert len(a.blocks) == 3 and all(not b.frozen_reasons for b in a.blocks)


def test_in_place_op_without_rule_is_not_a_pass_through():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 6), torch.nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            h = h.index_fill_(1, torch.tensor([0]), 0.5)  # returns h itself, changed: no rule
            return self.b(h)

    a = G.analyze(Net(), torch.randn(3, 4))
    g = next(g for g in a.groups if "a" in g.modules)
    assert g.fully_frozen and "no rule for .index_fill_()" in g.describe_frozen()


def test_asserted_norm_act_blocks_are_removable(analyses):
    a = analyses("resnet_timm_normact")
    assert len(a.blocks) == 4 and all(not b.frozen_reasons for b in a.blocks)
    assert any(n.target is torch._assert for b in a.blocks for n in a.traced.gm.graph.nodes if n.name in b.nodes)
    plan = G.PruningPlan(keep={}, removed_blocks=(1, 3))
    pruned = G.rewrite(a, plan)
    result = G.verify(a, plan, pruned)
    assert result.ok and result.max_rel_diff < 1e-5


def test_hf4_style_decoder_prunes_gqa_heads_through_computed_view_shapes(analyses):
    a = analyses("decoder_hf4_style")
    assert a.traced.front_end == "fx"
    heads = [g for g in a.groups if g.unit == "head"]
    # a key/value head with its two query heads is one unit; rotate_half slices by x.shape[-1] // 2
    assert [g.size for g in heads] == [2, 2] and all(g.prunable and g.exact for g in heads)
    assert not any("inv_freq" in m for g in a.groups for m in g.modules)  # a constant, not channels
    plan = G.PruningPlan(keep={heads[0].id: (1,), heads[1].id: (0,)})
    pruned_applied = G.apply_plan(a, plan)
    pruned = pruned_applied.model
    assert pruned_applied.verify.ok and pruned_applied.verify.max_rel_diff < 1e-5
    kept_applied = G.apply_plan(a, plan, keep_class=True)
    kept = kept_applied.model
    assert type(kept).__name__ == "HandWrittenDecoder" and kept_applied.verify.ok
    attn = kept.layers[0].self_attn
    assert (attn.num_heads, attn.num_key_value_heads) == (2, 1) and attn.q_proj.out_features == 16


@pytest.mark.parametrize("name, count", [("vit", 4), ("swin", 6), ("resnet_basic", 6), ("vit_torchvision", 4),
                                         ("decoder_hf4_style", 4), ("efficientnet_stochastic_depth", 3)])
def test_removable_block_counts(analyses, name, count):
    """Side values (shapes, rotary tables, masks) shared between branches never hide a block."""
    assert len(analyses(name).blocks) == count


def test_gpt2_conv1d_and_in_place_causal_mask(analyses):
    a = analyses("gpt2_hf4_style")  # its masked buffer slice needs torch.export
    assert a.traced.front_end == "export" and "opaque" in a.traced.front_end_reason
    heads = [g for g in a.groups if g.unit == "head"]
    mlp = [g for g in a.groups if g.size == 128]
    assert len(heads) == 2 and len(mlp) == 2 and all(g.prunable and g.exact for g in heads + mlp)
    pruned_applied = G.apply_plan(a, G.random_plan(a, 0.5, seed=0), keep_class=False)  # the graph is under test
    pruned = pruned_applied.model
    assert sum("masked_fill_" in str(n.target) for n in pruned.graph.nodes) == 2  # side effects: kept
    assert pruned_applied.verify.ok and pruned_applied.verify.max_rel_diff < 1e-5
    pruned_applied = G.apply_plan(a, G.random_plan(a, 0.5, seed=1, block_ratio=0.5))
    pruned = pruned_applied.model
    assert pruned_applied.verify.ok and pruned_applied.verify.max_rel_diff < 1e-5


def test_conv1d_addmm_under_fx():
    from tests.zoo.library_styles import Conv1D

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc, self.c_proj = Conv1D(24, 8), Conv1D(8, 24)

        def forward(self, x):
            return self.c_proj(torch.nn.functional.gelu(self.c_fc(x)))

    a = G.analyze(MLP(), torch.randn(2, 5, 8), front_end="fx")
    hidden = next(g for g in a.groups if g.size == 24)
    assert hidden.prunable and hidden.exact and {"c_fc", "c_proj"} <= set(hidden.modules)
    plan = G.PruningPlan(keep={hidden.id: tuple(range(0, 24, 3))})
    pruned_applied = G.apply_plan(a, plan)
    pruned = pruned_applied.model
    assert pruned.c_fc.weight.shape == (8, 8) and pruned.c_proj.weight.shape == (8, 8)
    assert pruned_applied.verify.ok
    kept_applied = G.apply_plan(a, plan, keep_class=True)
    kept = kept_applied.model
    assert (kept.c_fc.nf, kept.c_proj.nx) == (8, 8) and kept_applied.verify.ok
