"""The GDP phase of `gdp-graph train`: the finalized model takes over after the cut."""

from __future__ import annotations

import torch
from rich.console import Console

from gdp_graph.gates.attach import attach
from gdp_graph.recipes.cifar10.gdp_phase import gdp_phase
from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet


class Batches(list):
    def set_epoch(self, epoch: int) -> None:
        pass


def test_the_finalized_model_takes_over_at_the_first_epoch_end_after_the_cut() -> None:
    torch.manual_seed(0)
    batches = Batches((torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(4))
    gated = attach(cifar_resnet(8), policy="cifar_resnet", example_inputs=torch.randn(2, 3, 32, 32),
                   total_steps=3 * len(batches), steps_per_epoch=len(batches))  # cut at step 4 (0.3 * 12)
    seen = {}

    def on_finalized(pruned, report):
        assert report.check.ok and bool(gated.fixed)
        seen["state"] = {k: v.clone() for k, v in pruned.state_dict().items()}
        seen["model"] = pruned

    trajectory: list = []
    pruned, report, gated_epochs = gdp_phase(gated, batches, epochs=3, lr=0.05, gate_lr=0.02, device=torch.device("cpu"),
                                             autocast=False, console=Console(quiet=True), trajectory=trajectory,
                                             on_finalized=on_finalized, finalize_at_cut=True)
    assert gated_epochs == 1 and [t["model"] for t in trajectory] == ["gated", "finalized", "finalized"]
    assert pruned is seen["model"] and report.plan.keep
    trained = [k for k, v in pruned.state_dict().items() if v.is_floating_point() and not torch.equal(v, seen["state"][k])]
    assert any(k.endswith("weight") for k in trained)  # the smaller model trained on
    assert int(gated.bank.step) == len(batches)  # the gated model stopped at the end of the epoch of its cut


def test_without_finalize_at_cut_the_gated_model_trains_the_whole_phase() -> None:
    torch.manual_seed(0)
    batches = Batches((torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(4))
    gated = attach(cifar_resnet(8), policy="cifar_resnet", example_inputs=torch.randn(2, 3, 32, 32),
                   total_steps=3 * len(batches), steps_per_epoch=len(batches))
    trajectory: list = []
    _, report, gated_epochs = gdp_phase(gated, batches, epochs=3, lr=0.05, gate_lr=0.02, device=torch.device("cpu"),
                                        autocast=False, console=Console(quiet=True), trajectory=trajectory,
                                        on_finalized=lambda pruned, r: None)
    assert gated_epochs == 3 and [t["model"] for t in trajectory] == ["gated"] * 3
    assert int(gated.bank.step) == 3 * len(batches) and report.check.ok
