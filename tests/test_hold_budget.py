"""``regularizer.hold_budget`` after every gate step: the units that a cut to the target would
keep *now* are the ones held open (gate >= 0.99). ``GatedModel`` ranks the units once per step and
uses that set both to carry the others' gates through the epsilon change and to hold these; the
check here ranks them again after the step, so a ranking that the epsilon change moved would
show up as a unit the cut keeps below the hold."""

from __future__ import annotations

import pytest
import torch

from gdp_graph.gates.attach import attach
from gdp_graph.gates.hold import budget_keep_mask
from tests.zoo import ZOO


@pytest.mark.parametrize("name, policy", [("resnet_basic", "default"), ("vit", "vit")])
def test_what_the_cut_would_keep_after_every_step_is_held_open(name: str, policy: str) -> None:
    torch.manual_seed(0)
    model, x = ZOO[name]()
    gated = attach(model.train(), policy=policy, example_inputs=x, total_steps=40)
    opt = torch.optim.Adam(gated.parameters(), lr=0.01)
    batch = torch.randn(4, *x[0].shape[1:], generator=torch.Generator().manual_seed(1))
    checked = 0
    while not bool(gated.fixed):
        opt.zero_grad()
        (gated(batch).pow(2).mean() + gated.penalty()).backward()
        opt.step()
        gated.step()
        if bool(gated.fixed):
            break
        kept = budget_keep_mask(gated)
        gates = gated.bank.flat().detach()[:-1]  # without the trailing constant
        assert bool((gates[kept] >= 0.99 - 1e-6).all()), gates[kept].min()
        checked += 1
    assert checked >= 5  # several steps before the cut, with epsilon falling between them
    assert gated.fix_report["reopened"] == 0
