"""The analysis' shortcuts must not change what it finds nor touch the user's model.

- The traced copy shares the user's parameter storage (no clone): nothing downstream may write
  through it, and nothing it returns may alias the user's weights.
- Branch constants skip running a linear/conv layer on zeros (its bias everywhere): the
  constants must equal what running the layer gives.
- Branch constants on the traced weights run the ops after the zeroed layers at one position
  where they are position-wise (:mod:`gdp_graph.graph.collapsed`): the same constants (or the
  same None) as running them at every position, and the model's biases untouched.
- ``rewrite_graph(copy_weights=False)`` (finalize) builds on the weights it is handed, never on the
  traced module that shares the user's storage.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gdp_graph as G
from gdp_graph.graph import blocks as blocks_module
from gdp_graph.graph.blocks import branch_constant
from gdp_graph.graph.model_copy import private_copy


class _Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        # the last gated layer's bias meets a depthwise conv's zero padding: not a constant
        self.body2 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
        self.tokens = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = x + self.body(x)
        x = x + self.body2(x)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.tokens(t)
        return self.head(t.mean(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = _Stem()
    for m in model.modules():  # non-trivial norms and biases, so constants are not all zero
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.bias, -1, 1)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.uniform_(m.bias, -1, 1)
    return model


def test_private_copy_shares_weight_storage_but_no_objects():
    model = _model().train()
    work = private_copy(model)
    assert model.training and not work.training
    for (name, p), q in zip(model.named_parameters(), work.parameters()):
        assert q is not p and q.data_ptr() == p.data_ptr(), name
    for b, c in zip(model.buffers(), work.buffers()):
        assert c.data_ptr() != b.data_ptr()  # a forward in train mode updates buffers in place
    work.to(torch.float64)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_private_copy_fills_in_what_an_old_pickle_lacks_as_deepcopy_does():
    import copy

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Linear(4, 2))
    for layer in model:
        del layer.__dict__["_forward_hooks_always_called"]  # a module unpickled from an old torch
    del model[0].__dict__["padding_mode"]  # ... from before convolutions had one
    work, deep = private_copy(model), copy.deepcopy(model)
    assert [set(a.__dict__) for a in work.modules()] == [set(b.__dict__) for b in deep.modules()]
    assert work[0].padding_mode == deep[0].padding_mode == "zeros"


def test_lazy_modules_are_materialized_on_the_copy_only():
    model = nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU(), nn.LazyConv2d(4, 1))
    analysis = G.analyze(model, torch.randn(1, 3, 8, 8))
    assert any(g.prunable for g in analysis.groups)
    assert all(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())


def test_pruned_and_gated_models_never_alias_or_change_the_users_weights():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    analysis = G.analyze(model, x)
    plan = G.PruningPlan(keep=G.random_plan(analysis, 0.5, seed=0).keep,
                         removed_blocks=frozenset(b.id for b in analysis.blocks if b.prunable))
    assert plan.removed_blocks, [b.frozen_reasons for b in analysis.blocks]
    pruned = G.rewrite(analysis, plan)
    gated = G.attach(model, "default", example_inputs=x, total_steps=10)
    user = {p.data_ptr() for p in model.parameters()}
    for produced in (pruned, gated):
        assert not user & {p.data_ptr() for p in produced.parameters()}
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)
        for p in gated.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_branch_constants_equal_running_the_layers_on_zeros(monkeypatch):
    analysis = G.analyze(_model(), torch.randn(1, 3, 8, 8))
    assert len(analysis.blocks) == 3
    fast = [branch_constant(analysis.traced, b) for b in analysis.blocks]
    monkeypatch.setattr(blocks_module, "_BIAS_ON_ZERO", {})
    slow = [branch_constant(analysis.traced, b) for b in analysis.blocks]
    assert [c is None for c in fast] == [c is None for c in slow] == [False, True, False]
    for f, s in zip(fast, slow):
        if f is not None:
            assert torch.allclose(f, s, atol=1e-6) and f.abs().max() > 0.1


class _Scaled(nn.Module):
    """Branches ending in a zeroed layer followed by position-wise ops: an in-place activation
    on the bias, a layer scale after a permute, a scale read off the data (full-size operand),
    views sized by the tensor's shape and a roll and flip."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 1),
                               nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Hardswish())
        self.gamma = nn.Parameter(torch.rand(8))
        self.c = nn.Conv2d(8, 8, 1)
        self.d = nn.Linear(8, 8)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        x = x + (self.b(x).permute(0, 2, 3, 1) * self.gamma).permute(0, 3, 1, 2)
        x = x + self.c(torch.relu(x)) * x.sigmoid()
        t = x.permute(0, 2, 3, 1)  # tokens, then a window-style branch: views read off shapes, a roll
        u = self.d(t.reshape(1, 64, 8))
        u = torch.roll(u.view(-1, 8, 8, u.shape[-1]), shifts=(1, 1), dims=(1, 2)).flip(1)
        return t + u


def test_collapsed_branch_constants_equal_the_full_run(monkeypatch):
    from gdp_graph.graph import collapsed

    torch.manual_seed(0)
    model = _Scaled()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            nn.init.uniform_(m.bias, -1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analysis = G.analyze(model, torch.randn(1, 3, 8, 8))
    assert len(analysis.blocks) == 4
    ran = []
    real = collapsed.collapsed_run
    monkeypatch.setattr(blocks_module, "collapsed_run", lambda *a: ran.append(real(*a)) or ran[-1])
    fast = [branch_constant(analysis.traced, b) for b in analysis.blocks]
    assert ran == [True, True, True, True]
    monkeypatch.setattr(blocks_module, "collapsed_run", lambda *a: False)
    slow = [branch_constant(analysis.traced, b) for b in analysis.blocks]
    assert [c is None for c in fast] == [c is None for c in slow] == [False, False, True, False]
    for f, s in (pair for pair in zip(fast, slow) if pair[0] is not None):
        assert f.shape == s.shape and torch.allclose(f, s, atol=1e-6) and f.abs().max() > 0.05
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _ClampedInPlace(nn.Module):
    """A branch whose zeroed layer is followed by an in-place clamp module with no position-wise
    entry of its own: it returns its input object, changed."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 1)
        self.clamp = nn.Hardtanh(-0.1, 0.1, inplace=True)

    def forward(self, x):
        x = self.stem(x)
        return x + self.clamp(self.conv(x))


def test_an_in_place_module_is_not_taken_for_one_that_hands_its_input_back(monkeypatch):
    from gdp_graph.graph import collapsed

    torch.manual_seed(0)
    model = _ClampedInPlace()
    with torch.no_grad():
        model.conv.bias.uniform_(-1, 1)
    analysis = G.analyze(model, torch.randn(1, 3, 8, 8))
    (block,) = analysis.blocks
    ran = []
    real = collapsed.collapsed_run
    monkeypatch.setattr(blocks_module, "collapsed_run", lambda *a: ran.append(real(*a)) or ran[-1])
    fast = branch_constant(analysis.traced, block)
    assert ran == [False]  # not known to be position-wise: the full run
    monkeypatch.setattr(blocks_module, "collapsed_run", lambda *a: False)
    slow = branch_constant(analysis.traced, block)
    assert torch.equal(fast, slow) and float(fast.abs().max()) <= 0.1 + 1e-7


@pytest.mark.parametrize("dtype", [torch.int32, torch.long])
def test_channel_tracks_of_a_window_partition_keep_their_dims(dtype):
    """The int32 path (max against min) and the int64 one (first slice) agree on a Swin-style
    window partition of a channel-labelled map."""
    from gdp_graph.graph.channels import infer_tracks

    labels = torch.arange(1, 7, dtype=dtype).reshape(1, 1, 1, 6).expand(1, 4, 4, 6)
    windows = labels.reshape(1, 2, 2, 2, 2, 6).permute(0, 1, 3, 2, 4, 5).reshape(4, 4, 6)
    (track,), constant = infer_tracks(windows.contiguous())
    assert track.dims == (2,) and track.labels.tolist() == list(range(1, 7)) and constant.numel() == 0


def test_rewrite_takes_over_only_weights_it_is_handed():
    from gdp_graph.prune.rewrite import rewrite_graph
    model = _model()
    analysis = G.analyze(model, torch.randn(1, 3, 8, 8))
    keep = G.random_plan(analysis, 0.5, seed=1).keep
    local = min(keep, key=lambda gid: len(analysis.groups[gid].modules))
    plan = G.PruningPlan(keep={local: keep[local]})  # one layer's group pruned, the other layers left whole
    with pytest.raises(G.RewriteError, match="copy_weights=False"):
        rewrite_graph(analysis, plan, copy_weights=False)
    lent = private_copy(analysis.traced.gm)
    before = {k: v.clone() for k, v in lent.state_dict().items()}
    copied = rewrite_graph(analysis, plan, weights=lent)
    assert all(torch.equal(before[k], v) for k, v in lent.state_dict().items())  # copied, never edited
    handed = private_copy(analysis.traced.gm)
    lent_storage = {p.data_ptr() for p in handed.parameters()}
    taken = rewrite_graph(analysis, plan, weights=handed, copy_weights=False)
    assert {p.data_ptr() for p in taken.parameters()} & lent_storage  # layers left whole were not cloned
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(copied(x), taken(x))


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_flops_counted_while_tracing_equal_a_separate_count(front_end):
    from gdp_graph.graph.cost import annotate_flops, count_flops

    model, x = _model(), torch.randn(1, 3, 8, 8)
    counted = G.analyze(model, x, front_end=front_end, count_flops=True)
    plain = G.analyze(model, x, front_end=front_end)
    assert not any("flops" in n.meta for n in plain.traced.gm.graph.nodes)
    annotate_flops(plain.traced.gm, plain.traced.values)
    during = {n.name: n.meta.get("flops") for n in counted.traced.gm.graph.nodes}
    after = {n.name: n.meta.get("flops") for n in plain.traced.gm.graph.nodes}
    assert during == after and sum(v or 0 for v in during.values()) == count_flops(model, (x,)) > 0
