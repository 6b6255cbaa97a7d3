"""Models as people call them: example inputs as a tensor, a tuple or a dict of keyword
arguments; outputs that are tuples, dicts, dataclasses or ``ModelOutput``s; and a verify that
refuses to call a degenerate comparison exact."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
import torch
from torch import nn

import gdp_graph as G
from gdp_graph.prune.verify import compare_outputs


@dataclasses.dataclass
class TaggerOutput:
    logits: torch.Tensor
    hidden: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None


class Tagger(nn.Module):
    """A token tagger called like a Hugging Face model: ``model(input_ids=..., mask=...)``,
    with a branch on ``labels`` that only tracing with ``labels=None`` fixed can pass."""

    def __init__(self, vocab: int = 11, width: int = 8, hidden: int = 12, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.head = nn.Linear(width, classes)

    def forward(self, input_ids, mask=None, labels=None, return_dict=True):
        h = self.embed(input_ids)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        if mask is not None:
            h = h * mask.unsqueeze(-1)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        if not return_dict:
            return (logits, h)
        return TaggerOutput(logits=logits, hidden=h, loss=loss)


def _ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 11, (2, 5), generator=g)


def _mlp_group(analysis):
    return next(g for g in analysis.groups if "fc1" in g.modules and "embed" not in g.modules)


@pytest.mark.parametrize("inputs", [
    lambda ids: {"input_ids": ids, "mask": torch.ones(2, 5)},
    lambda ids: {"input_ids": ids},
    lambda ids: (ids,),
    lambda ids: ids,
], ids=["kwargs", "kwargs-partial", "tuple", "tensor"])
def test_inputs_as_tensor_tuple_or_keywords(inputs):
    model = Tagger()
    analysis = G.analyze(model, inputs(_ids()))
    assert analysis.traced.front_end == "fx"
    mlp = _mlp_group(analysis)
    assert mlp.prunable and mlp.exact
    stream = next(g for g in analysis.groups if "embed" in g.modules)
    # the hidden stream is returned in the dataclass: it must be frozen, not pruned
    assert stream.fully_frozen and "reaches the model output" in stream.describe_frozen()
    plan = G.PruningPlan(keep={mlp.id: (0, 3, 4, 9)})
    pruned = G.rewrite(analysis, plan)
    result = G.verify(analysis, plan, pruned)
    assert result.ok and result.max_rel_diff < 1e-6, result
    out = pruned(*analysis.traced.example_inputs)
    assert isinstance(out, TaggerOutput) and out.logits.shape == (2, 5, 3)


def test_tuple_output_through_keyword_flag():
    analysis = G.analyze(Tagger(), {"input_ids": _ids(), "return_dict": False})
    stream = next(g for g in analysis.groups if "embed" in g.modules)
    assert stream.fully_frozen
    plan = G.random_plan(analysis, 0.5, seed=0)
    assert plan.keep and G.verify(analysis, plan, G.rewrite(analysis, plan)).ok


def test_keyword_inputs_that_do_not_fit_are_one_clear_error():
    with pytest.raises(G.TraceError, match="do not fit Tagger.forward"):
        G.analyze(Tagger(), {"input_ids": _ids(), "attention": torch.ones(2, 5)})
    with pytest.raises(G.TraceError, match="must be a tensor, a tuple"):
        G.analyze(Tagger(), 3)


def test_model_output_fields_are_frozen_and_compared():
    transformers = pytest.importorskip("transformers")

    @dataclasses.dataclass
    class Out(transformers.utils.ModelOutput):
        logits: Optional[torch.Tensor] = None
        hidden_states: Optional[torch.Tensor] = None

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.b(torch.relu(self.a(x)))
            return Out(logits=self.c(h), hidden_states=h)

    analysis = G.analyze(Net(), torch.randn(3, 4))
    hidden = next(g for g in analysis.groups if "c" in g.modules and "a" not in g.modules)
    assert hidden.fully_frozen
    inner = next(g for g in analysis.groups if "a" in g.modules and "c" not in g.modules)
    plan = G.PruningPlan(keep={inner.id: (1, 2, 5)})
    pruned = G.rewrite(analysis, plan)
    assert G.verify(analysis, plan, pruned).ok
    assert isinstance(pruned(torch.randn(3, 4)), Out)


def test_verify_refuses_all_zero_or_constant_reference():
    zero = {"logits": torch.zeros(2, 3)}
    result = compare_outputs(zero, {"logits": torch.zeros(2, 3)}, 1e-4)
    assert not result.ok and "all zeros" in result.inconclusive and "NOT VERIFIED" in str(result)
    const = TaggerOutput(logits=torch.full((2, 3), 0.5), hidden=torch.full((2, 4), 0.5))
    result = compare_outputs(const, const, 1e-4)
    assert not result.ok and "constant" in result.inconclusive
    varying = (torch.arange(6.0).reshape(2, 3),)
    assert compare_outputs(varying, varying, 1e-4).ok


def test_verify_has_no_absolute_floor_for_tiny_outputs():
    ref = torch.tensor([1e-12, 2e-12, 3e-12])
    assert not compare_outputs(ref, ref * 2, 1e-4).ok  # 100% off, though |diff| is 3e-12
    assert compare_outputs(ref, ref.clone(), 1e-4).ok


def test_zero_initialized_head_is_not_verified():
    class ZeroHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
            nn.init.zeros_(self.b.weight)
            nn.init.zeros_(self.b.bias)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    analysis = G.analyze(ZeroHead(), torch.randn(3, 4))
    group = next(g for g in analysis.groups if "a" in g.modules)
    plan = G.PruningPlan(keep={group.id: (0, 1)})
    pruned = G.rewrite(analysis, plan, check=False)
    result = G.verify(analysis, plan, pruned)
    assert not result.ok and result.inconclusive


# -- the torch.export front end -------------------------------------------------------------------
class ShapeChecked(nn.Module):
    """fx cannot trace this forward (a Python branch on a shape); torch.export can."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8, 4)

    def forward(self, x, **options):
        if x.shape[1] != 3:
            raise ValueError("expected RGB")
        h = torch.relu(self.bn(self.conv(x)))
        h = h + self.dw(h)
        return {"logits": self.head(h.mean((2, 3))), "features": h}


def test_auto_falls_back_to_export_and_says_why():
    model = ShapeChecked().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    analysis = G.analyze(model, x)
    assert analysis.traced.front_end == "export"
    assert "torch.fx could not trace it" in analysis.traced.front_end_reason
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # never mutated
    # the parameters keep their module names, so policies match as with fx
    group = next(g for g in analysis.groups if "conv" in g.modules)
    assert {"conv", "bn", "dw"} <= set(group.modules)
    assert group.fully_frozen  # the features reach the output
    with pytest.raises(G.TraceError, match="cannot trace ShapeChecked.forward"):
        G.analyze(model, x, front_end="fx")


def test_export_front_end_prunes_what_fx_prunes():
    from tests.zoo import ZOO

    for name in ("resnet_basic", "mobilenetv2", "vit_mha"):
        model, inputs = ZOO[name]()
        fx_analysis = G.analyze(model, inputs, front_end="fx")
        exported = G.analyze(model, inputs, front_end="export")
        assert exported.traced.front_end == "export"
        assert len(exported.prunable_groups()) == len(fx_analysis.prunable_groups()), name
        assert len(exported.blocks) == len(fx_analysis.blocks), name
        plan = G.random_plan(exported, 0.4, seed=1, block_ratio=0.5)
        result = G.verify(exported, plan, G.rewrite(exported, plan))
        assert result.ok and result.max_rel_diff < 1e-5, (name, result)


def test_keyword_inputs_into_var_keyword_use_export():
    model = ShapeChecked().eval()
    analysis = G.analyze(model, {"x": torch.randn(2, 3, 8, 8), "scale": torch.ones(1)})
    assert analysis.traced.front_end == "export" and "**options" in analysis.traced.front_end_reason


def test_unknown_front_end_is_refused():
    with pytest.raises(G.TraceError, match="front_end must be one of"):
        G.analyze(Tagger(), _ids(), front_end="onnx")


def test_in_place_method_with_unused_result_survives_the_rewrite():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = self.a(x)
            scores = x @ x.transpose(0, 1)
            scores.masked_fill_(scores > 0.5, -1.0)  # result unused: only the side effect counts
            return self.b(torch.relu(h)) + scores.sum(1, keepdim=True)

    analysis = G.analyze(Masked(), torch.randn(5, 4))
    group = next(g for g in analysis.groups if "a" in g.modules)
    plan = G.PruningPlan(keep={group.id: (0, 2, 3)})
    pruned = G.rewrite(analysis, plan, keep_class=False)  # the graph itself is under test
    assert any(n.target == "masked_fill_" for n in pruned.graph.nodes)
    assert G.verify(analysis, plan, pruned).ok


# -- a rewrite that keeps the user's class ---------------------------------------------------------
def test_cnn_keeps_its_class_sizes_and_hooks():
    from tests.zoo import ZOO

    model, inputs = ZOO["mobilenetv2"]()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    analysis = G.analyze(model, inputs)
    seen.clear()
    plan = G.random_plan(analysis, 0.5, seed=0)
    pruned_applied = G.apply_plan(analysis, plan, keep_class=True)
    pruned = pruned_applied.model
    assert type(pruned) is type(model) and pruned_applied.verify.ok
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels and m.weight.shape[1] * m.groups == m.in_channels
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean.shape == (m.num_features,)
    with torch.no_grad():
        pruned(*inputs)
    assert seen  # the user's hook on the root came along
    assert all(p.shape == q.shape for p, q in zip(model.parameters(), ZOO["mobilenetv2"]()[0].parameters()))


def test_class_that_fixes_its_width_falls_back_with_the_reason():
    from tests.zoo import ZOO

    model, inputs = ZOO["vit_torchvision"]()
    analysis = G.analyze(model, inputs)
    heads = next(g for g in analysis.groups if g.unit == "head")
    with pytest.warns(UserWarning, match="the class's forward fails on the pruned sizes"):
        pruned_applied = G.apply_plan(analysis, G.PruningPlan(keep={heads.id: (0, 1)}), keep_class=True)
        pruned = pruned_applied.model
    assert isinstance(pruned, torch.fx.GraphModule) and pruned_applied.verify.ok


def test_dropped_hooks_are_named():
    from tests.zoo import ZOO

    model, inputs = ZOO["resnet_basic"]()
    model.register_forward_hook(lambda m, i, o: None)
    model.layer1.register_forward_pre_hook(lambda m, i: None)
    model.conv1.register_forward_hook(lambda m, i, o: None)  # a leaf: kept in the GraphModule
    analysis = G.analyze(model, inputs)
    with pytest.warns(UserWarning, match=r"hooks on the root ResNet, layer1 are not in the pruned GraphModule"):
        pruned = G.rewrite(analysis, G.random_plan(analysis, 0.3, seed=0), keep_class=False)
    assert pruned.get_submodule("conv1")._forward_hooks


def test_export_source_refuses_an_exported_graph_clearly(tmp_path):
    from gdp_graph.prune.export import export_source, load, save

    model = ShapeChecked().eval()
    analysis = G.analyze(model, torch.randn(2, 3, 8, 8))
    pruned = G.rewrite(analysis, G.PruningPlan(keep={}), keep_class=False)
    with pytest.raises(TypeError, match="cannot write a graph captured by torch.export"):
        export_source(pruned, tmp_path / "pkg")
    save(pruned, tmp_path / "pruned.pt")  # the documented route: the whole module
    out = load(tmp_path / "pruned.pt")(*analysis.traced.example_inputs)
    assert set(out) == {"logits", "features"}


def test_export_frozen_reasons_name_the_module():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.special.i0(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.odd, self.b = nn.Linear(4, 6), Odd(), nn.Linear(6, 2)

        def forward(self, x, **options):
            return self.b(self.odd(self.a(x)))

    analysis = G.analyze(Net(), {"x": torch.randn(3, 4), "flag": torch.ones(1)})
    group = next(g for g in analysis.groups if "a" in g.modules)
    assert "no rule for special_i0.default at node 'special_i0' (special_i0.default) in odd" in group.describe_frozen()
