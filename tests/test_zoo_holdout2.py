"""What a second hold-out run (issue 20: YOLOv8, GhostNet, Res2Net, ResNeSt, mixers, HRNet,
RepVGG, Wav2Vec2, a text CNN, T5) found failing, one test per fixed bug."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gdp_graph as G
from tests.zoo import ZOO


def _prune_exactly(model, inputs, ratio=0.5, seed=0):
    analysis = G.analyze(model, inputs)
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
