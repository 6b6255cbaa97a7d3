"""Unpacking a proxy (``b, c, h, w = x.shape``, ``a, b = x.chunk(2, 1)``) while tracing reads each
function's bytecode once per trace (gdp_graph.graph.trace._Unpacking): the graph is the one
torch.fx traces, and iterating a proxy any other way still fails as it does in fx."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

import gdp_graph as G
from gdp_graph.graph.trace import symbolic_trace_with_fallback


class _Unpacks(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        first, second = self.conv(x).chunk(2, 1)
        for _ in range(2):  # the same line twice: its instructions read from the tracer's table
            n, k = first.shape[:2]
            first = first.reshape(n, k, h * w).reshape(b, k, h, w)
        return first * second.sigmoid()


class _Iterates(nn.Module):
    def forward(self, x):
        return sum(t for t in x)


def test_unpacking_traces_the_graph_fx_traces():
    model = _Unpacks()
    ours, opaque = symbolic_trace_with_fallback(model)
    assert not opaque and ours.code == fx.symbolic_trace(model).code
    analysis = G.analyze(model, torch.randn(2, 4, 3, 3))
    assert len(analysis.traced.gm.graph.nodes) == len(ours.graph.nodes)


def test_iterating_a_proxy_still_fails_as_in_fx():
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(_Iterates())
    with pytest.raises(G.GdpError):
        symbolic_trace_with_fallback(_Iterates())


@pytest.mark.parametrize("name", ["resnet_bottleneck", "mobilenetv3", "swin", "vit_manual_attn", "decoder_hf4_style"])
def test_the_proxy_fast_path_traces_the_same_graph(name, monkeypatch):
    """``_FallbackTracer.create_arg`` hands our proxies' nodes back without fx's checks: the same
    graph as fx's own path gives."""
    from gdp_graph.graph import trace as tracing
    from tests.zoo import ZOO

    fast, _ = symbolic_trace_with_fallback(ZOO[name]()[0])  # a fresh model each: fx numbers the
    monkeypatch.setattr(tracing._FallbackTracer, "create_arg", fx.Tracer.create_arg)  # constants it
    slow, _ = symbolic_trace_with_fallback(ZOO[name]()[0])  # leaves on the model it traces
    assert fast.code == slow.code and str(fast.graph) == str(slow.graph)
