"""The memory-layout benchmark compares the same model in both layouts (no timing asserted)."""

import torch

from benchmarks.memory_format import compare
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet


def test_compare_times_both_layouts_pairwise_and_leaves_the_model_alone() -> None:
    model = cifar_resnet(8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    row = compare(model, lambda m: None, torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), reps=2, warmup=0)
    assert row["pairs"] == 2 and row["contiguous_ms"] > 0 and row["channels_last_ms"] > 0
    assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # trained copies only
