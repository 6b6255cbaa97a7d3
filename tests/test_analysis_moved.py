"""Tracks moved by reading an op's arguments (gdp_graph.graph.rules.moved) equal what running the
op on label tensors gives, node by node: single and joint tracks through permutes, transposes,
unsqueezes, rolls and flips of tracked and untracked dims, and views that keep the last dim."""

from __future__ import annotations

import torch
from torch import nn

import gdp_graph as G
from gdp_graph.graph import analysis as analysis_module
from gdp_graph.graph.rules import moved, shape


class _Tokens(nn.Module):
    """Window-style token shuffles around a relative bias table (a joint spatial track)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.table = nn.Parameter(torch.randn(4, 4))
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        t = self.proj(x)  # 1, 4, 4, 8
        t = torch.roll(t, shifts=(1, -1), dims=(1, 2)) + self.table.unsqueeze(-1)
        t = t.permute(0, 3, 1, 2).flip(2).transpose(1, 3).contiguous()  # 1, 4, 4, 8 again
        t = t.reshape(1, 16, 8).unsqueeze(1).squeeze(1) + self.proj(x).view(1, 16, 8)  # one track: the last dim
        return self.out(t.roll(2, 1)).mean(1)


def _same(a, b) -> bool:
    return len(a.tracks) == len(b.tracks) and all(
        s.dims == t.dims and torch.equal(s.labels, t.labels) for s, t in zip(a.tracks, b.tracks))


def test_moved_tracks_equal_running_the_op_on_labels(monkeypatch):
    model = _Tokens()
    analysis = G.analyze(model, torch.randn(1, 4, 4, 6))
    compared = []
    general = shape._run_on_labels

    def both(ctx):
        fast = moved.moved_track(ctx)
        if fast is not None:
            compared.append((getattr(ctx.node.target, "__name__", ctx.node.target), _same(fast, general(ctx))))
        return fast or general(ctx)

    monkeypatch.setattr(shape, "_run_on_labels", lambda ctx, *a, **k: general(ctx, *a, **k))
    monkeypatch.setattr(shape, "moved_track", both)
    analysis_module.propagate(analysis.traced)
    assert {"roll", "permute", "flip", "transpose", "view", "unsqueeze"} <= {t for t, _ in compared}
    assert all(ok for _, ok in compared), compared


def test_analysis_is_the_same_without_moved_tracks(monkeypatch):
    x = torch.randn(1, 4, 4, 6)
    fast = G.analyze(_Tokens(), x)
    monkeypatch.setattr(shape, "moved_track", lambda ctx: None)
    slow = G.analyze(_Tokens(), x)
    assert [(g.size, g.unit, sorted(map(repr, g.members)), sorted(g.couplings), g.frozen_units.tolist())
            for g in fast.groups] == \
           [(g.size, g.unit, sorted(map(repr, g.members)), sorted(g.couplings), g.frozen_units.tolist())
            for g in slow.groups]
    assert torch.equal(fast.group_of_element, slow.group_of_element)
