"""Rules registered for a user's own layers are used: the layer becomes one fx leaf, its rule
propagates channels and rewrites it, and the pruned model is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gdp_graph as G
from gdp_graph.graph.rules import OpRule, Resize, has_leaf_rule, register_channelwise, register_rule, register_sizes


class MyChannelScale(nn.Module):
    """A per-channel scale whose forward fx cannot trace (a data-dependent branch): without a
    rule it would be an opaque leaf with every channel around it frozen."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e30:  # data-dependent control flow: untraceable
            return x
        return x * self.weight.view(1, -1, 1, 1)


CALLS = {"propagate": 0, "rewrite": 0}


@register_rule(MyChannelScale)  # the README's example, verbatim apart from the call counter
class MyChannelScaleRule(OpRule):
    def propagate(self, ctx):
        CALLS["propagate"] += 1
        out = ctx.passthrough(0)
        ctx.member(out.on(1).labels, "param", 0, "weight")
        return out

    def resize(self, module, rctx):
        CALLS["rewrite"] += 1
        return Resize({"weight": ((0, rctx.out_kept(1)),)})


class ScaleNet(nn.Module):
    def __init__(self, scale: type[nn.Module]):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.scale = scale(8)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.scale(self.conv(x))))


def _prune_and_check(model: nn.Module):
    x = torch.randn(2, 3, 8, 8)
    analysis = G.analyze(model, x)
    group = next(g for g in analysis.groups if "conv" in g.modules)
    assert "scale" in group.modules, group.modules
    assert group.prunable and group.exact, group.describe_frozen()
    assert not analysis.opaque
    plan = G.PruningPlan(keep={group.id: (0, 2, 3, 7)})
    pruned = G.rewrite(analysis, plan)
    assert pruned.get_submodule("scale").weight.shape == (4,)
    result = G.verify(analysis, plan, pruned)
    assert result.ok and result.max_rel_diff < 1e-6, result
    return analysis, pruned


def test_registered_user_layer_becomes_a_leaf_and_its_rule_runs():
    before = dict(CALLS)
    analysis, pruned = _prune_and_check(ScaleNet(MyChannelScale))
    assert CALLS["propagate"] > before["propagate"]
    assert CALLS["rewrite"] > before["rewrite"]
    ops = {n.target: n.op for n in analysis.traced.gm.graph.nodes}
    assert ops["scale"] == "call_module"  # a leaf, not traced through
    assert isinstance(pruned.get_submodule("scale"), MyChannelScale)


class LayerScale(nn.Module):
    """A traceable per-channel scale over the last dim (transformer style) with a buffer."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)
        self.register_buffer("shift", torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.shift


class ChannelLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.ls = LayerScale(10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.ls(self.fc1(x))))


def test_register_channelwise_one_line_helper():
    register_channelwise(LayerScale, params=("gamma", "shift"), dim=-1)
    model = ChannelLast()
    x = torch.randn(2, 5, 6)
    analysis = G.analyze(model, x)
    assert {n.target: n.op for n in analysis.traced.gm.graph.nodes}["ls"] == "call_module"
    group = next(g for g in analysis.groups if "fc1" in g.modules)
    assert "ls" in group.modules and group.prunable
    plan = G.PruningPlan(keep={group.id: (1, 4, 5)})
    pruned = G.rewrite(analysis, plan)
    ls = pruned.get_submodule("ls")
    assert ls.gamma.shape == (3,) and ls.shift.shape == (3,)
    assert "shift" in dict(ls.named_buffers())
    assert torch.equal(ls.gamma, model.ls.gamma.detach()[[1, 4, 5]])
    assert G.verify(analysis, plan, pruned).ok


def test_subclass_overriding_forward_is_not_a_leaf():
    class Doubled(MyChannelScale):
        def forward(self, x):
            return 2 * x * self.weight.view(1, -1, 1, 1)

    class Inherited(MyChannelScale):
        pass

    assert has_leaf_rule(MyChannelScale(2)) and has_leaf_rule(Inherited(2))
    assert not has_leaf_rule(Doubled(2))  # its forward is not what the rule describes
    assert not has_leaf_rule(nn.Sequential())


def test_register_channelwise_refuses_non_modules():
    with pytest.raises(ValueError, match="nn.Module subclass"):
        register_channelwise(torch.relu)


class MemberOnlyScale(MyChannelScale):
    """The same layer with a rule that names its members and nothing else."""


@register_rule(MemberOnlyScale)
def member_only_rule(ctx):
    out = ctx.passthrough(0)
    ctx.member(out.on(1).labels, "param", 0, "weight")
    return out


def test_a_rule_without_resize_slices_the_tensors_its_members_name():
    model = ScaleNet(MemberOnlyScale)
    analysis, pruned = _prune_and_check(model)
    smap = G.slice_map(analysis, G.PruningPlan(keep={next(g.id for g in analysis.groups if "scale" in g.modules):
                                                     (0, 2, 3, 7)}))
    assert smap.entries["scale.weight"][0][0] == 0 and smap.entries["scale.weight"][0][1].tolist() == [0, 2, 3, 7]
    assert torch.equal(pruned.get_submodule("scale").weight, model.scale.weight.detach()[[0, 2, 3, 7]])


def test_a_rule_with_the_old_rewrite_module_hook_is_refused_with_the_new_name():
    with pytest.raises(TypeError, match=r"rewrite_module is no longer called.*resize\(module, rctx\)"):
        @register_rule(type("Other", (nn.Module,), {}))
        class OldRule(OpRule):
            def propagate(self, ctx):
                return ctx.passthrough(0)

            def rewrite_module(self, module, rctx):
                return module


class Projection(nn.Module):
    """A layer traced through (no rule) whose forward reads a size attribute: ``x @ w`` viewed
    to ``width`` columns, like Hugging Face's Conv1D."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.width = n_out
        self.w = nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x):
        return (x.reshape(-1, x.shape[-1]) @ self.w).view(*x.shape[:-1], self.width)


class Projected(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = Projection(6, 10)
        self.down = nn.Linear(10, 3)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_register_sizes_keeps_a_traced_through_layers_attribute_in_step():
    register_sizes(Projection, lambda m, shapes: {"width": shapes["w"][1]})
    model = Projected().eval()
    x = torch.randn(2, 5, 6)
    analysis = G.analyze(model, x)
    group = next(g for g in analysis.groups if g.size == 10 and g.prunable)
    plan = G.PruningPlan(keep={group.id: (1, 4, 5, 8)})
    smap = G.slice_map(analysis, plan)
    assert smap.attribute_changes["up"] == {"width": 4}
    pruned_applied = G.apply_plan(analysis, plan)
    pruned = pruned_applied.model
    assert type(pruned) is Projected and pruned.up.width == 4 and pruned_applied.verify.ok
