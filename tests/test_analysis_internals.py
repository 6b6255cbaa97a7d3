"""The vectorized pieces of the analysis give the answers of their plain definitions.

The union-find is resolved in one vectorized pass, track inference avoids a min, and
concatenations run their label tensors at size 1 on untracked dims; each is checked here
against a straightforward reference, and the last against the full-size run on real models.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gdp_graph as G
from gdp_graph.graph.channels import expand_labels, flatten_chans, infer_tracks
from gdp_graph.graph.elements import ElementStore, connected_roots
from gdp_graph.graph.rules import context as context_module
from gdp_graph.graph.rules import shape as shape_rules
from tests.zoo import ZOO


def _sequential_roots(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """Textbook union-find that links the larger root under the smaller."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(x) for x in range(n)]


@pytest.mark.parametrize("seed", range(6))
def test_connected_roots_match_a_sequential_union_find(seed):
    g = torch.Generator().manual_seed(seed)
    n = 300
    k = int(torch.randint(0, 400, (1,), generator=g))
    edges = torch.randint(0, n, (2, k), generator=g)
    roots = connected_roots(torch.arange(n), edges)
    assert roots.tolist() == _sequential_roots(n, list(zip(*edges.tolist())))


def test_long_chain_resolves_to_its_smallest_element():
    n = 2000
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    edges = torch.stack([order[:-1], order[1:]])  # one path visiting every element in random order
    assert connected_roots(torch.arange(n), edges).tolist() == [0] * n


def test_store_resolves_unions_made_after_an_earlier_resolution():
    store = ElementStore()
    a = store.new_space(4, "a", "a")
    b = store.new_space(4, "b", "b")
    store.union(a, b)
    first = store.roots().clone()
    assert first[b].tolist() == a.tolist()
    c = store.new_space(2, "c", "c")  # created after roots() was asked for
    store.union(c, b[2:])
    store.union(a[:1], a[1:2])
    roots = store.roots()
    assert roots[c].tolist() == a[2:].tolist()
    assert roots[b[1]].item() == a[0].item() and store.find(int(a[1])) == int(a[0])
    assert roots[0].item() == 0 and store.count == 11


def test_union_skips_nulls_and_union_along_ties_each_row():
    store = ElementStore()
    e = store.new_space(6, "n", "e")
    store.union(e[:2], torch.tensor([0, 0]))  # nothing to tie
    assert store.roots()[e].tolist() == e.tolist()
    grid = torch.stack([torch.tensor([0, int(e[1]), int(e[2])]),
                        torch.tensor([0, 0, 0]),
                        torch.tensor([int(e[3]), int(e[4]), int(e[5])])])
    first = store.union_along(grid, 0)
    assert first.tolist() == [int(e[1]), 0, int(e[3])]
    roots = store.roots()
    assert roots[e[2]] == roots[e[1]] and roots[e[5]] == roots[e[3]] and roots[e[1]] != roots[e[3]]
    assert roots[e[0]] == e[0]


def _reference_tracks(labels: torch.Tensor):
    """The definition: a dim varies when some slice along it holds two different elements."""
    varying = []
    for d in range(labels.dim()):
        rows = labels.movedim(d, -1).reshape(-1, labels.shape[d])
        if any(len(set(r[r != 0].tolist())) > 1 for r in rows):
            varying.append(d)
    return varying


@pytest.mark.parametrize("seed", range(16))
def test_infer_tracks_matches_its_definition(seed):
    g = torch.Generator().manual_seed(seed)
    shape = [int(s) for s in torch.randint(1, 5, (3,), generator=g)]
    # with and without nulls (two code paths), as int64 and as the int32 labels ops run on
    base = torch.randint(seed % 2, 6, shape, generator=g, dtype=torch.long if seed % 4 < 2 else torch.int32)
    # make some dims constant so that tracks of every form occur
    for d in range(3):
        if bool(torch.rand(1, generator=g) < 0.5):
            base = base.narrow(d, 0, 1).expand_as(base)  # a broadcast view: stride 0 along d
            if seed % 3 == 0:
                base = base.contiguous()
    tracks, constant = infer_tracks(base)
    varying = _reference_tracks(base)
    if not varying:
        assert tracks == [] and constant.tolist() == sorted(set(base[base != 0].tolist()))
        assert constant.dtype == torch.long
        return
    (track,) = tracks
    assert list(track.dims) == varying and track.labels.dtype == torch.long
    others = [d for d in range(3) if d not in varying]
    expected = base.amax(dim=others) if others else base
    assert torch.equal(track.labels, expected.long())


def _structure(analysis):
    groups = [(g.size, g.unit, sorted(g.couplings), g.frozen_units.tolist(), sorted(g.frozen_reasons),
               sorted(map(str, g.members)), sorted((s.node, s.arg, s.dim, s.unit_index.tolist()) for s in g.gate_sites))
              for g in analysis.groups]
    tracks = [(n.name, [(t.dims, t.labels.tolist()) for c in flatten_chans(n.meta.get("channels")) for t in c.tracks])
              for n in analysis.traced.gm.graph.nodes]
    return groups, tracks


class _CatMix(nn.Module):
    """Concatenations along channels, along a spatial dim, of a sequence and a stack."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(9, 6, 1)
        self.d = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        y = self.c(torch.cat([a, b], 1))
        tall = torch.cat([y, self.d(y)], dim=-2)  # along H: channels tracked on dim 1
        seq = torch.cat([tall.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)], 1)
        stacked = torch.stack([y, y], 0).sum(0)
        return self.fc(seq).mean(1) + F.adaptive_avg_pool2d(stacked, 1).flatten(1)[:, :3]


def _model_and_inputs(name):
    if name == "catmix":
        torch.manual_seed(0)
        return _CatMix().eval(), (torch.randn(2, 3, 8, 8),)
    return ZOO[name]()


@pytest.mark.parametrize("name", ["densenet", "inception", "shufflenetv2", "unet", "swin", "catmix"])
def test_cat_at_size_one_matches_the_full_size_run(name, monkeypatch):
    model, inputs = _model_and_inputs(name)
    fast = _structure(G.analyze(model, inputs))
    monkeypatch.setattr(shape_rules, "_all_dims_but", lambda ctx, position, ndim: ())
    full = _structure(G.analyze(model, inputs))
    assert fast == full


@pytest.mark.parametrize("name", ["swin", "vit", "shufflenetv2", "unet", "pixelshuffle_sr", "gpt2_hf4_style", "catmix"])
def test_broadcast_labels_match_materialized_ones(name, monkeypatch):
    """Movement ops first run on broadcast label views (stride 0 off the track); the result
    must be what fully materialized labels give."""
    model, inputs = _model_and_inputs(name)
    broadcast = _structure(G.analyze(model, inputs))
    monkeypatch.setattr(context_module, "expand_labels", lambda track, shape: expand_labels(track, shape).contiguous())
    assert _structure(G.analyze(model, inputs)) == broadcast


@pytest.mark.parametrize("name", ["densenet", "inception", "unet", "vit", "catmix"])
def test_concatenated_inputs_run_together_as_they_run_apart(name, monkeypatch):
    """A cat whose inputs are tracked only on the joined dim runs them in one pass; per input
    (the general path) must give the same, and a ViT's class token, tracked across the joined
    dim, must still be united with its patches."""
    model, inputs = _model_and_inputs(name)
    together = _structure(G.analyze(model, inputs))
    apart = context_module.RuleContext.movement
    monkeypatch.setattr(context_module.RuleContext, "movement",
                        lambda self, *a, side_by_side=None, **k: apart(self, *a, **k))
    assert _structure(G.analyze(model, inputs)) == together


def test_depthwise_conv_with_an_untracked_input_freezes_its_groups():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw = nn.Conv2d(3, 4, 1)
            self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
            self.out = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.out(self.dw(torch.cat([self.pw(x), x[:, :2]], 1)))

    model = Model().eval()
    a = G.analyze(model, torch.randn(1, 3, 8, 8))
    (tracked,) = [g for g in a.groups if "pw" in g.modules]
    assert "depthwise" in tracked.couplings and not bool(tracked.frozen_units.any())
    frozen = [g for g in a.groups if "dw" in g.modules and g is not tracked]
    assert frozen and all(bool(g.frozen_units.all()) for g in frozen)
    assert any("untracked" in r for g in frozen for r in g.frozen_reasons)
    # the tracked units are the four depthwise channels that follow pw, one unit each
    assert tracked.size == 4
