"""What a second hold-out run (issue 20: YOLOv8, GhostNet, Res2Net, ResNeSt, mixers, HRNet,
RepVGG, Wav2Vec2, a text CNN, T5) found failing, one test per fixed bug."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import gdp_graph as G
from gdp_graph.prune.export import load, save
from gdp_graph.prune.keep_class import KeepClassWarning
from gdp_graph.prune.weights import realistic_weights
from tests.zoo import ZOO


def _prune_exactly(model, inputs, ratio=0.5, seed=0, front_end="auto"):
    analysis = G.analyze(model, inputs, front_end=front_end)
    plan = G.random_plan(analysis, ratio, seed=seed)
    result = G.verify(analysis, plan, G.rewrite(analysis, plan, keep_class=False))
    assert result.ok, result
    return analysis, plan


def test_resnest_split_attention_groups_are_exact_and_prunable():
    """The radix sum (``x.reshape(B, radix, C, H, W).sum(dim=1)``) and the radix softmax reduce
    one dim of a joint (radix, channel) track: each channel's fiber is one unit, not a freeze
    ("sum over a tracked dimension tied to another") plus "softmax over channels"."""
    model, inputs = ZOO["resnest"]()
    analysis, plan = _prune_exactly(model, inputs)
    attn = [g for g in analysis.groups if any(m.target.endswith("conv2.fc2") for m in g.members)]
    assert len(attn) == 3 and all(g.prunable and g.exact for g in attn), [g.describe_frozen() for g in attn]
    assert {g.id for g in attn} <= set(plan.keep)


class RadixSum(nn.Module):
    """A (radix, channel) split summed, averaged and soft-maxed over the radix."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 1)
        self.logits = nn.Conv2d(6, 12, 1)
        self.out = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = self.conv(x).view(b, 2, 6, x.shape[2], x.shape[3])
        attn = F.softmax(self.logits(y.mean(1).mean((2, 3), keepdim=True)).view(b, 2, 6, 1, 1), dim=1)
        return self.out((y * attn).sum(dim=1)).amax((2, 3))


def test_reducing_one_dim_of_a_joint_track_keeps_the_other_prunable():
    torch.manual_seed(0)
    analysis, plan = _prune_exactly(RadixSum().eval(), (torch.randn(2, 3, 5, 5),))
    group = next(g for g in analysis.groups if any(m.target == "conv" for m in g.members))
    assert group.size == 6 and group.prunable and group.exact
    assert group.id in plan.keep and len(plan.keep[group.id]) < 6


class CachesOnForward(nn.Module):
    """Caches tensors and sizes on itself in forward, as Ultralytics' ``Detect`` does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.shape = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(torch.relu(self.conv(x)))
        self.shape = y.shape
        self.anchors = torch.arange(y.shape[-1], dtype=y.dtype) + 0.5
        return y.flatten(2) + self.anchors.repeat(y.shape[-2])


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_attributes_a_forward_caches_do_not_break_keeping_the_class(front_end):
    """Tracing left the caches as fx proxies or fake tensors on the analysed copy, and the
    rewrite's copy of it failed (``RuntimeError: Cannot access data pointer of Tensor``)."""
    torch.manual_seed(0)
    model, inputs = CachesOnForward().eval(), (torch.randn(2, 3, 6, 6),)
    analysis = G.analyze(model, inputs, front_end=front_end)
    plan = G.random_plan(analysis, 0.5, seed=0)
    pruned = G.rewrite(analysis, plan)
    assert isinstance(pruned, CachesOnForward)
    assert G.verify(analysis, plan, pruned).ok


def test_yolov8_keeps_its_class_and_prunes_the_c2f_chunks_exactly():
    model, inputs = ZOO["yolov8"]()
    analysis = G.analyze(model, inputs)
    chunks = [g for g in analysis.prunable_groups() if {"split", "concat"} <= g.couplings]
    assert len(chunks) >= 16  # both halves of every C2f's chunk(2, 1)
    plan = G.random_plan(analysis, 0.5, seed=1, block_ratio=0.5)
    assert plan.removed_blocks
    pruned = G.rewrite(analysis, plan)
    assert type(pruned).__name__ == "DetectionModel"
    assert G.verify(analysis, plan, pruned).ok


class Symmetric(nn.Module):
    """A parametrization without ``right_inverse``."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + w.flip(0)


def _old_weight_norm(conv: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(conv)


def _symmetric(conv: nn.Module) -> nn.Module:
    parametrize.register_parametrization(conv, "weight", Symmetric())
    return conv


class Vocoder(nn.Module):
    """Convs under a weight reparametrization, a residual and an upsampler, as HiFi-GAN writes them."""

    def __init__(self, wrap) -> None:
        super().__init__()
        self.pre = wrap(nn.Conv1d(4, 16, 7, padding=3))
        self.res = wrap(nn.Conv1d(16, 16, 3, padding=1))
        self.up = wrap(nn.ConvTranspose1d(16, 8, 4, 2, padding=1))
        self.head = wrap(nn.Conv1d(8, 12, 1))
        self.post = nn.Conv1d(12, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        x = x + self.res(F.leaky_relu(x, 0.1))
        x = self.head(F.leaky_relu(self.up(F.leaky_relu(x, 0.1)), 0.1))
        return torch.tanh(self.post(F.leaky_relu(x, 0.1)))


# weight_norm keeps dim 0 (or 1) apart: the channels along it prune exactly (the magnitude is
# sliced with the direction), the others are inexact (the kept rows' norms would change)
WRAPS = {"parametrizations.weight_norm": (nn.utils.parametrizations.weight_norm, "head"),
         "parametrizations.weight_norm(dim=1)": (lambda c: nn.utils.parametrizations.weight_norm(c, dim=1), "up"),
         "utils.weight_norm (hook)": (_old_weight_norm, "head")}


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_weight_normed_convs_prune_along_the_dim_kept_apart_and_save(wrap, tmp_path):
    """The rewrite crashed on a parametrized conv (``RewriteError ... KeyError: 'weight'``), the
    analysis on the old hook-based weight_norm (``RuntimeError: Only Tensors created explicitly
    by the user (graph leaves) support the deepcopy protocol``) and ``save`` on a parametrized
    module (``Serialization of parametrized modules is only supported through state_dict()``)."""
    make, exact_producer = WRAPS[wrap]
    torch.manual_seed(0)
    model, inputs = Vocoder(make).eval(), (torch.randn(2, 4, 10),)
    analysis = G.analyze(model, inputs)
    exact = [g for g in analysis.prunable_groups() if g.exact]
    assert [next(m.target for m in g.members if m.role == "produce") for g in exact] == [exact_producer]
    inexact = [g for g in analysis.groups if not g.exact]
    assert len(inexact) == 2 and all("weight_norm normalizes its 'weight' over them" in r
                                     for g in inexact for r in g.inexact_reasons)
    plan = G.random_plan(analysis, 0.5, seed=0)
    assert set(plan.keep) == {exact[0].id}
    pruned = G.rewrite(analysis, plan)
    assert isinstance(pruned, Vocoder) and G.verify(analysis, plan, pruned).ok
    kept = len(plan.keep[exact[0].id])
    assert getattr(pruned, exact_producer).weight.shape[1 if exact_producer == "up" else 0] == kept < exact[0].size
    save(pruned, tmp_path / "pruned.pt")
    with torch.no_grad():
        assert torch.allclose(load(tmp_path / "pruned.pt")(*inputs), pruned(*inputs), atol=1e-6)
    loose = G.random_plan(analysis, 0.5, seed=0, allow_inexact=True)
    smap = G.apply_plan(analysis, loose, check=False).slice_map
    assert not any(name.endswith(".weight") and name != "post.weight" for name in smap.entries), list(smap.entries)
    assert not G.verify(analysis, loose, G.rewrite(analysis, loose, check=False)).ok


def test_a_parametrization_other_than_weight_norm_is_refused_with_its_name():
    """The rewrite cannot slice what it computes its weight from: its channels are frozen with
    the reason (the rewrite raised ``KeyError: 'weight'``)."""
    torch.manual_seed(0)
    model, inputs = Vocoder(_symmetric).eval(), (torch.randn(2, 4, 10),)
    analysis = G.analyze(model, inputs)
    touching = [g for g in analysis.groups if any(m.target in ("pre", "res", "up", "head") for m in g.members)]
    assert touching and not any(g.prunable for g in touching)
    assert all("parametrization Symmetric, which the rewrite cannot slice" in g.describe_frozen() for g in touching)
    plan = G.random_plan(analysis, 0.5, seed=0)
    assert G.verify(analysis, plan, G.rewrite(analysis, plan)).ok


def test_an_old_weight_norm_model_is_copied_for_realistic_weights():
    """``gdp-graph check`` (realistic weights) and every other deep copy of the user's model
    failed on the old weight_norm's non-leaf weight (``RuntimeError: Only Tensors created
    explicitly by the user (graph leaves) support the deepcopy protocol``)."""
    model, inputs = ZOO["hifigan"]()
    realistic = realistic_weights(model, inputs)
    assert realistic is not model
    with torch.no_grad():
        assert realistic(*inputs).shape == model(*inputs).shape


def test_finalize_takes_a_plain_tensor_attribute_from_the_export():
    """Ultralytics' ``Detect.stride`` is a plain tensor attribute: torch.export made it a constant
    of the graph, and finalize refused the gated class for not having it (``FinalizeError: the
    gated model's weights do not match its trace: missing ['model.22.stride']``)."""
    model, inputs = ZOO["yolov8"]()
    gated = G.attach(model, policy="default", example_inputs=inputs, total_steps=2, steps_per_epoch=1)
    (gated(*inputs).pow(2).mean() + gated.penalty()).backward()
    gated.step()
    pruned, _ = G.finalize(gated)
    with torch.no_grad():
        assert pruned(*inputs).shape == model(*inputs).shape


class EinsumAttention(nn.Module):
    """Attention written with ``torch.einsum``, with or without a head split."""

    def __init__(self, scores: str, heads: bool) -> None:
        super().__init__()
        self.scores, self.heads = scores, heads
        self.q, self.k, self.v, self.o = nn.Linear(8, 12), nn.Linear(8, 12), nn.Linear(8, 12), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.heads:
            q, k, v = (t.view(b, n, 2, -1).transpose(1, 2) for t in (q, k, v))
        attn = torch.einsum(self.scores, q, k).softmax(-1)
        out = torch.einsum("bhij,bhjd->bhid" if self.heads else "bij,bjd->bid", attn, v)
        if self.heads:
            out = out.transpose(1, 2).reshape(b, n, -1)
        return self.o(out).mean(1)


@pytest.mark.parametrize("front_end", ["fx", "export"])
@pytest.mark.parametrize("scores, heads", [("b h i d, b h j d -> b h i j", True), ("...id,...jd->...ij", False)])
def test_einsum_attention_prunes_heads_and_channels(scores, heads, front_end):
    """``torch.einsum`` had no rule: every channel around it was frozen ("no rule for einsum")."""
    torch.manual_seed(0)
    analysis, plan = _prune_exactly(EinsumAttention(scores, heads).eval(), (torch.randn(2, 7, 8),), front_end=front_end)
    q_group = next(g for g in analysis.groups if any(m.target in ("q", "q.weight") for m in g.members
                                                      if m.role in ("produce", "param") and m.dim == 0))
    if heads:  # q and k tied per head: heads are the units, whatever the front end
        assert q_group.unit == "head" and q_group.size == 2 and q_group.prunable and q_group.id in plan.keep
    elif front_end == "fx":  # q's channels contracted with k's: tied, gated on q
        assert q_group.size == 12 and q_group.prunable and q_group.id in plan.keep
    else:  # aten.einsum takes its operands in a list: no gate site there
        assert "einsum contracts channels of operands given in a list" in q_group.describe_frozen()
    assert not any("no rule for einsum" in g.describe_frozen() for g in analysis.groups)


def test_t5_heads_tied_across_layers_keep_the_class():
    """T5's relative position bias (first layer) is added in every layer, so one head group
    spans both layers; its head counts (``n_heads``, ``inner_dim``) were looked for only in the
    modules' common prefix, so the class failed on the pruned sizes and the GraphModule came back."""
    model, inputs = ZOO["t5_encoder"]()
    analysis = G.analyze(model, inputs)
    heads = next(g for g in analysis.groups if g.unit == "head")
    assert heads.prunable and {m.target.split(".")[2] for m in heads.members if "block" in m.target} == {"0", "1"}
    plan = G.PruningPlan(keep={heads.id: (0, 3)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeepClassWarning)
        pruned = G.rewrite(analysis, plan)
    assert type(pruned).__name__ == "T5EncoderClassifier" and G.verify(analysis, plan, pruned).ok
    for block in pruned.encoder.block:
        attention = block.layer[0].SelfAttention
        assert (attention.n_heads, attention.inner_dim, attention.q.out_features) == (2, 16, 16)
    assert pruned.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.shape == (8, 2)


class StdConv2d(nn.Conv2d):
    """BiT's weight-standardized conv (google-research/big_transfer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StandardizedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = StdConv2d(3, 16, 3, padding=1)
        self.b = StdConv2d(16, 12, 3, padding=1)
        self.c = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x))))).mean((2, 3))


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_a_weight_standardized_with_var_mean_reads_its_fan_in_inexactly(front_end):
    """``torch.var_mean`` had no rule: every channel of a BiT was frozen ("no rule for
    var_mean"). A filter standardized over its fan-in: its output channels prune exactly, the
    channels it reads are inexact (as NFNet's batch_norm over the weight)."""
    torch.manual_seed(0)
    model, inputs = StandardizedNet().eval(), (torch.randn(2, 3, 8, 8),)
    analysis, plan = _prune_exactly(model, inputs, front_end=front_end)
    read_by_b = next(g for g in analysis.groups if g.size == 16)
    out_of_b = next(g for g in analysis.groups if g.size == 12)
    assert not read_by_b.exact and "variance over channels" in "; ".join(read_by_b.inexact_reasons)
    assert out_of_b.exact and out_of_b.prunable and out_of_b.id in plan.keep
    loose = G.random_plan(analysis, 0.5, seed=0, allow_inexact=True)
    assert read_by_b.id in loose.keep
    assert not G.verify(analysis, loose, G.rewrite(analysis, loose, check=False)).ok


@pytest.mark.parametrize("name, removable", [("convmixer", 3), ("poolformer", 6)])
def test_branches_that_mix_no_channels_are_removable_blocks(name, removable):
    """ConvMixer's ``Residual`` around a depthwise conv and PoolFormer's ``pool(x) - x`` token
    mixer have no layer mixing channels, where block gates went: they were no blocks at all."""
    model, inputs = ZOO[name]()
    analysis = G.analyze(model, inputs)
    assert sum(b.prunable for b in analysis.blocks) == removable
    plan = G.random_plan(analysis, 0.3, seed=0, block_ratio=1.0)
    assert len(plan.removed_blocks) == removable
    assert G.verify(analysis, plan, G.rewrite(analysis, plan)).ok


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` as people use it for a sequence classifier."""

    def __init__(self, norm_first: bool, masked: bool = False) -> None:
        super().__init__()
        self.masked = masked
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)
        self.register_buffer("mask", torch.zeros(7, 7), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x), mask=self.mask if self.masked else None).mean(1))


@pytest.mark.parametrize("norm_first", [False, True])
def test_torch_transformer_encoder_prunes_heads_and_ffn_channels(norm_first):
    """``nn.TransformerEncoder(Layer)`` was one leaf without a rule: every channel touching it
    was frozen ("no rule for module type TransformerEncoder")."""
    torch.manual_seed(0)
    model, inputs = TorchEncoder(norm_first).eval(), (torch.randn(2, 7, 6),)
    analysis, plan = _prune_exactly(model, inputs)
    units = sorted((g.unit, g.size) for g in analysis.prunable_groups() if g.exact)
    assert units == [("channel", 32), ("channel", 32), ("head", 4), ("head", 4)], units
    assert len(plan.keep) == 4


def test_a_masked_torch_transformer_encoder_stays_one_refused_op():
    torch.manual_seed(0)
    model, inputs = TorchEncoder(False, masked=True).eval(), (torch.randn(2, 7, 6),)
    analysis = G.analyze(model, inputs)
    embedded = next(g for g in analysis.groups if any(m.target == "embed" and m.role == "produce" for m in g.members))
    assert "no rule for module type TransformerEncoder" in embedded.describe_frozen()


class WithScripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = torch.jit.script(nn.Sequential(nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Conv2d(24, 16, 1)))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.relu(self.stem(x))).mean((2, 3)))


def test_a_torchscript_submodule_is_one_refused_op_named_by_its_type():
    """fx traced into the scripted module and the refusal named "no rule for .forward()"."""
    torch.manual_seed(0)
    analysis = G.analyze(WithScripted().eval(), (torch.randn(2, 3, 8, 8),))
    stem = next(g for g in analysis.groups if any(m.target == "stem" for m in g.members))
    assert "no rule for module type RecursiveScriptModule at node 'body'" in stem.describe_frozen()
