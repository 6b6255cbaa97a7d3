"""The Torch-Pruning baselines of the CIFAR methods benchmark land on the FLOPs asked for, give a
working model and leave the caller's model alone."""

from __future__ import annotations

import pytest
import torch
import torch_pruning  # noqa: F401 - in the test extra, so CI runs these tests instead of skipping them

from benchmarks.tp_baseline import prune_with_torch_pruning
from gdp_graph.graph.cost import count_flops
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    model = cifar_resnet(20)
    # a fresh BN has every scale at 1: BN-scale importance would tie everywhere and prune nothing
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    return model


@pytest.mark.parametrize("importance", ["group_l1", "bn_scale"])
# about 5 s a case on one core; 0.35 (more steps) only in the slow suite, to keep the default run short
@pytest.mark.parametrize("target", [0.5, pytest.param(0.35, marks=pytest.mark.slow)])
def test_lands_on_the_flops_target_and_leaves_the_model_alone(resnet20, importance, target):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    pruned = prune_with_torch_pruning(resnet20, x, target, importance)
    assert pruned is not resnet20
    assert abs(count_flops(pruned, (x,)) / count_flops(resnet20, (x,)) - target) <= 0.01
    assert pruned.training == resnet20.training
    pruned.eval()
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    after = resnet20.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_rejects_an_unknown_importance(resnet20):
    with pytest.raises(ValueError, match="unknown importance"):
        prune_with_torch_pruning(resnet20, torch.randn(1, 3, 32, 32), 0.5, "taylor")
