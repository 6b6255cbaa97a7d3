"""The recording run without the arithmetic no rule reads (gdp_graph.graph.shapes_only) gives the
same analysis as the full recording: every group, block, frozen reason and element map, and every
node's shape and dtype, on every traceable zoo model; and a reader of numbers gets real ones."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gdp_graph as G
from gdp_graph.graph import record
from gdp_graph.graph.meta import SHAPE_ONLY, VALUE
from tests.zoo import ZOO_TRACEABLE


def _value_shape(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), value.dtype, value.device.type)
    if isinstance(value, (tuple, list)):
        return type(value).__name__, [_value_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: _value_shape(v) for k, v in value.items()}
    return value if isinstance(value, (int, float, bool, str, type(None), torch.Size, torch.dtype)) else type(value)


def signature(analysis: G.Analysis) -> dict[str, Any]:
    """Everything the analysis hands on, as plain comparable values."""
    groups = [(g.id, g.size, g.unit, g.unit_width, [repr(m) for m in g.members], sorted(g.couplings), g.modules,
               g.frozen_units.tolist(), g.frozen_reasons, g.inexact_reasons, g.divisor, g.block,
               [(s.node, s.arg, s.dim, s.ndim, s.unit_index.tolist()) for s in g.gate_sites])
              for g in analysis.groups]
    blocks = [(b.id, b.name, b.add_node, b.arg, b.nodes, b.modules, b.shortcut_is_identity, b.frozen_reasons,
               [(s.node, s.arg, s.dim, s.ndim, s.unit_index.tolist()) for s in b.gate_sites])
              for b in analysis.blocks]
    nodes = [(n.name, _value_shape(n.meta.get(VALUE))) for n in analysis.traced.gm.graph.nodes]
    return {"groups": groups, "blocks": blocks, "nodes": nodes, "front_end": analysis.traced.front_end,
            "group_of": analysis.group_of_element.tolist(), "unit_of": analysis.unit_of_element.tolist(),
            "elements": analysis.store.count, "opaque": [repr(o) for o in analysis.opaque]}


def full_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every later recording in this test runs in full, as before shape-only values."""
    monkeypatch.setattr(record, "_ShapesRecorder", record._Recorder)


@pytest.mark.parametrize("name", sorted(ZOO_TRACEABLE))
def test_shapes_only_recording_gives_the_same_analysis(name, monkeypatch):
    model, inputs = ZOO_TRACEABLE[name]()
    fast = G.analyze(model, inputs)
    skipped = [n.name for n in fast.traced.gm.graph.nodes if n.meta.get(SHAPE_ONLY)]
    fast_signature = signature(fast)
    full_recording(monkeypatch)
    full = G.analyze(model, inputs)
    assert fast_signature == signature(full)
    assert not any(n.meta.get(SHAPE_ONLY) for n in full.traced.gm.graph.nodes)
    if skipped:  # a later reader gets the real numbers
        name = skipped[-1]
        assert torch.equal(fast.traced.values[name], full.traced.values[name])


class _ReadsNumbers(torch.nn.Module):
    """A convolution whose output's numbers decide a shape downstream (which values a top-k keeps)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        return self.head(y * (y >= y.topk(4, dim=1).values[:, -1:]))


def test_an_op_that_may_read_numbers_records_in_full():
    analysis = G.analyze(_ReadsNumbers().eval(), torch.randn(2, 3, 8, 8))
    assert not any(n.meta.get(SHAPE_ONLY) for n in analysis.traced.gm.graph.nodes)


def test_a_hooked_layer_runs_on_real_numbers():
    seen = []
    head = torch.nn.Linear(8, 4)
    head.register_forward_hook(lambda m, i, o: seen.append(o.abs().sum()))
    model = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(48, 8), head).eval()
    analysis = G.analyze(model, torch.randn(2, 3, 4, 4))
    node = next(n for n in analysis.traced.gm.graph.nodes if n.op == "call_module" and n.target == "2")
    assert seen and not node.meta.get(SHAPE_ONLY)
