"""The performance benchmarks measure what they claim: full-size models, and plans that remove
the share asked for with channel counts rounded as asked."""

from __future__ import annotations

import pytest
import torch

import gdp_graph as G
from benchmarks.latency_pruned import ratio_plan
from benchmarks.models import BENCH
from benchmarks.models.cnns import densenet121, efficientnet_b0, mobilenet_v3_large, regnet_y_400mf, resnet50
from benchmarks.models.transformers import convnext_tiny, swin_t, vit_b_16
from tests.zoo import ZOO

# parameter counts of the torchvision models these reproduce
PUBLISHED = {
    resnet50: 25_557_032, densenet121: 7_978_856, efficientnet_b0: 5_288_548, mobilenet_v3_large: 5_483_032,
    regnet_y_400mf: 4_344_144, convnext_tiny: 28_589_128, vit_b_16: 86_567_656, swin_t: 28_288_354,
}


@pytest.mark.parametrize("build", list(PUBLISHED), ids=lambda b: b.__name__)
def test_benchmark_models_have_the_published_size(build):
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialization time
            model = build()
    except RuntimeError:  # a builder that reads a value (ConvNeXt's drop-path rates use .item())
        model = build()
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[build]


def test_every_benchmark_model_is_listed():
    assert sorted(BENCH) == sorted(b.__name__ for b in PUBLISHED)


@pytest.mark.parametrize("round_to", [1, 8])
def test_ratio_plan_removes_the_share_and_rounds_kept_channels(round_to):
    model, inputs = ZOO["resnet_bottleneck"]()
    analysis = G.analyze(model, inputs)
    plan = ratio_plan(analysis, 0.5, round_to=round_to)
    plan.validate(analysis)
    assert plan.keep
    for gid, kept in plan.keep.items():
        g = analysis.groups[gid]
        assert not any(bool(g.frozen_units[u]) for u in set(range(g.size)) - set(kept))
        channels = len(kept) * g.unit_width
        if round_to > 1:
            assert channels % round_to == 0
        else:
            assert len(kept) == g.size - round(0.5 * g.size)
    pruned_applied = G.apply_plan(analysis, plan)
    pruned = pruned_applied.model
    assert pruned_applied.verify.ok
