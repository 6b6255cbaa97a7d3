"""ATen rules of the torch.export front end for transposed convolutions, ``constant_pad_nd`` and
advanced indexing (``aten.index.Tensor``): the export front end finds the groups torch.fx finds,
and a plan removing about half of every group's units rewrites exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gdp_graph as G
from tests.zoo import ZOO, randomize_norms


def _ready(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(model).eval()


def _exact_random_plans(analysis, seeds=(0, 1, 2)) -> None:
    """A random plan removing ~half of each prunable group's units rewrites exactly."""
    for seed in seeds:
        plan = G.random_plan(analysis, 0.5, seed=seed)
        assert plan.keep, "the plan removes nothing"
        pruned = G.rewrite(analysis, plan)
        result = G.verify(analysis, plan, pruned)
        assert result.ok and result.max_rel_diff <= 1e-5, (seed, result)


def _groups(analysis) -> list[tuple[int, str]]:
    return sorted((g.size, g.unit) for g in analysis.prunable_groups())


def _targets(analysis) -> set[str]:
    return {str(n.target) for n in analysis.traced.gm.graph.nodes if n.op == "call_function"}


# -- transposed convolutions ----------------------------------------------------------------------
class Decoder2d(nn.Module):
    """Plain, grouped (in/g = 2, out/g = 3) and depthwise ConvTranspose2d, with biases and BN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.gup = nn.ConvTranspose2d(8, 12, 2, stride=2, groups=4)
        self.bn2 = nn.BatchNorm2d(12)
        self.dw = nn.ConvTranspose2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(self.bn1(self.up(h)))
        h = torch.relu(self.bn2(self.gup(h)))
        return self.head(torch.relu(self.dw(h)))


class Decoder1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(3, 6, 3)
        self.up = nn.ConvTranspose1d(6, 4, 3, stride=2, output_padding=1)
        self.b = nn.Conv1d(4, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.up(torch.relu(self.a(x)))))


class Functional2d(nn.Module):
    """Decoder2d's convolutions written as ``torch.convolution`` calls: export keeps them as
    ``aten.convolution`` (the op decompositions produce), which fx has no rule for."""

    def __init__(self, reference: Decoder2d):
        super().__init__()
        self.ref = reference

    def forward(self, x):
        r = self.ref
        h = r.stem(x)

        def conv(m, h, transposed):
            out_pad = list(m.output_padding) if transposed else [0, 0]
            return torch.convolution(h, m.weight, m.bias, list(m.stride), list(m.padding), list(m.dilation),
                                     transposed, out_pad, m.groups)

        h = torch.relu(r.bn1(conv(r.up, h, True)))
        h = torch.relu(r.bn2(conv(r.gup, h, True)))
        return conv(r.head, torch.relu(conv(r.dw, h, True)), False)


@pytest.mark.parametrize("build, shape, op", [
    (Decoder2d, (2, 3, 6, 6), "aten.conv_transpose2d.input"),
    (Decoder1d, (2, 3, 10), "aten.conv_transpose1d.default"),
], ids=["2d", "1d"])
def test_conv_transpose_groups_match_fx_and_rewrite_exactly(build, shape, op):
    model, x = _ready(build()), torch.randn(*shape)
    fx_analysis = G.analyze(model, x, front_end="fx")
    exported = G.analyze(model, x, front_end="export")
    assert op in _targets(exported)
    assert _groups(exported) == _groups(fx_analysis)
    assert len(exported.prunable_groups()) == len(fx_analysis.prunable_groups()) >= 2
    _exact_random_plans(exported)


def test_grouped_conv_transpose_units_are_conv_groups():
    model, x = _ready(Decoder2d()), torch.randn(2, 3, 6, 6)
    exported = G.analyze(model, x, front_end="export")
    grouped = next(g for g in exported.prunable_groups() if "gup" in g.modules)
    assert grouped.unit == "conv-group" and grouped.size == 4  # 4 groups of 2 in / 3 out channels
    assert "up" in grouped.modules  # the plain transposed conv's outputs are the grouped one's inputs
    plan = G.PruningPlan(keep={grouped.id: (1, 3)})
    pruned = G.rewrite(exported, plan, keep_class=False)  # the graph's call arguments are under test
    assert G.verify(exported, plan, pruned).max_rel_diff <= 1e-5
    assert pruned.get_parameter("gup.weight").shape == (4, 3, 2, 2)  # rows of the kept groups
    assert pruned.get_parameter("up.weight").shape == (8, 4, 2, 2)  # [in, out]: its outputs shrink
    call = next(n for n in pruned.graph.nodes if n.name == "conv_transpose2d_1")
    assert call.args[6] == 2  # groups: the kept count


def test_aten_convolution_transposed_and_plain():
    reference = _ready(Decoder2d())
    model, x = Functional2d(reference).eval(), torch.randn(2, 3, 6, 6)
    exported = G.analyze(model, x, front_end="export")
    assert "aten.convolution.default" in _targets(exported)
    expected = G.analyze(reference, x, front_end="export")
    assert _groups(exported) == _groups(expected)
    _exact_random_plans(exported)


# -- constant_pad_nd ------------------------------------------------------------------------------
class SpatialPad(nn.Module):
    def __init__(self, direct: bool):
        super().__init__()
        self.direct = direct
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = self.a(x)
        pad = [1, 1, 2, 0]
        h = torch.constant_pad_nd(h, pad, 0.5) if self.direct else F.pad(h, pad, value=0.5)
        return self.head(self.b(h))


class ChannelPad(nn.Module):
    """ResNet option-A shortcut: a strided identity zero-padded along channels, added to a
    residual branch that doubles the width."""

    def __init__(self, direct: bool, value: float = 0.0):
        super().__init__()
        self.direct, self.value = direct, value
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = self.stem(x)
        pad = [0, 0, 0, 0, 2, 2]
        s = h[:, :, ::2, ::2]
        s = torch.constant_pad_nd(s, pad, self.value) if self.direct else F.pad(s, pad, value=self.value)
        return self.head(torch.relu(s + self.branch(h)))


@pytest.mark.parametrize("build", [lambda d: SpatialPad(d), lambda d: ChannelPad(d)], ids=["spatial", "channels"])
def test_constant_pad_nd_groups_match_fx_and_rewrite_exactly(build):
    """``torch.constant_pad_nd`` exports as ``aten.constant_pad_nd`` (fx has no rule for the
    torch function), so the fx reference is the same model written with ``F.pad``."""
    x = torch.randn(2, 3, 8, 8)
    model = _ready(build(True))
    fx_analysis = G.analyze(_ready(build(False)), x, front_end="fx")
    exported = G.analyze(model, x, front_end="export")
    assert "aten.constant_pad_nd.default" in _targets(exported)
    assert _groups(exported) == _groups(fx_analysis)
    assert len(exported.prunable_groups()) == len(fx_analysis.prunable_groups()) >= 2
    _exact_random_plans(exported)


def test_channel_pad_with_a_nonzero_value_keeps_the_constant_channels():
    model, x = _ready(ChannelPad(True, value=0.25)), torch.randn(2, 3, 8, 8)
    exported = G.analyze(model, x, front_end="export")
    # the stream's 8 channels: 4 carry the shortcut (the stem's group), 4 the padded constants
    padded = next(g for g in exported.groups if "branch.4" in g.modules and "stem.0" not in g.modules)
    assert padded.size == 4 and padded.fully_frozen
    assert any("padded with the constant 0.25" in r for r in padded.frozen_reasons)
    shortcut = next(g for g in exported.groups if {"stem.0", "branch.4"} <= set(g.modules))
    assert shortcut in exported.prunable_groups()
    _exact_random_plans(exported)


def test_cropping_along_channels_freezes_them():
    class Crop(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.b(torch.constant_pad_nd(torch.relu(self.a(x)), [0, 0, 0, 0, -1, -1]))

    exported = G.analyze(_ready(Crop()), torch.randn(2, 3, 4, 4), front_end="export")
    group = next(g for g in exported.groups if "a" in g.modules)
    assert group.fully_frozen and any("cropping" in r for r in group.frozen_reasons)


# -- index.Tensor ---------------------------------------------------------------------------------
class Indexed(nn.Module):
    """A learned table read through an index buffer (Swin's relative position bias) added to a
    layer's channels, and activations indexed along a spatial dim (channels pass through)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.table = nn.Parameter(torch.randn(7, 6))
        self.register_buffer("index", torch.tensor([3, 0, 6, 2, 2]))
        self.register_buffer("order", torch.tensor([4, 1, 1, 0, 3, 2]))
        self.b = nn.Linear(6, 3)

    def forward(self, x):  # x: (batch, 5, 4)
        h = torch.relu(self.a(x)) + self.table[self.index]
        h = h[:, self.order]  # tokens picked and repeated: channels pass through
        return self.b(h)


class ChannelIndexed(nn.Module):
    """Indexing the channel dim picks channels by data: they must stay."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.register_buffer("pick", torch.tensor([0, 2, 4, 5, 1, 3]))

    def forward(self, x):
        return self.b(torch.relu(self.a(x))[..., self.pick])


def test_index_tensor_groups_match_fx_and_rewrite_exactly():
    model, x = _ready(Indexed()), torch.randn(2, 5, 4)
    fx_analysis = G.analyze(model, x, front_end="fx")
    exported = G.analyze(model, x, front_end="export")
    assert "aten.index.Tensor" in _targets(exported)
    assert _groups(exported) == _groups(fx_analysis) == [(6, "channel")]
    group = exported.prunable_groups()[0]
    assert "table" in group.modules  # the table's columns are the layer's channels
    _exact_random_plans(exported)
    pruned = G.rewrite(exported, G.PruningPlan(keep={group.id: (0, 4)}))
    assert pruned.get_parameter("table").shape == (7, 2)


def test_index_tensor_along_channels_freezes_them():
    model, x = _ready(ChannelIndexed()), torch.randn(2, 5, 4)
    fx_analysis = G.analyze(model, x, front_end="fx")
    exported = G.analyze(model, x, front_end="export")
    assert len(exported.prunable_groups()) == len(fx_analysis.prunable_groups()) == 0
    group = next(g for g in exported.groups if "a" in g.modules)
    assert group.fully_frozen and any("index tensor" in r for r in group.frozen_reasons)


# -- zoo models that use these ops ----------------------------------------------------------------
@pytest.mark.parametrize("name, op", [("swin", "aten.index.Tensor"), ("unet", "aten.conv_transpose2d.input")])
def test_zoo_models_export_finds_the_fx_groups(name, op):
    """Before these rules, export found 3 of Swin's 6 prunable groups and 10 of U-Net's 12."""
    model, inputs = ZOO[name]()
    fx_analysis = G.analyze(model, inputs, front_end="fx")
    exported = G.analyze(model, inputs, front_end="export")
    assert op in _targets(exported)
    assert _groups(exported) == _groups(fx_analysis)
    assert len(exported.prunable_groups()) == len(fx_analysis.prunable_groups())
    assert len(exported.blocks) == len(fx_analysis.blocks)
    _exact_random_plans(exported, seeds=(0,))
