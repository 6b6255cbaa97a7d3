"""``gdp-graph train --compare METHOD``: the same command's schedule for another method, from the
same pretrained weights, so the report shows what GDP buys.

``polarization``  the policy's gates with the polarization regularizer (Zhuang et al. 2020),
                  trained and cut exactly like GDP's (same epochs, learning rates, ``fix_at``).
``magnitude`` / ``activation`` / ``taylor``  one shot (:mod:`gdp_graph.importance`): the units
                  are scored on the pretrained weights (a few training batches for the data-driven
                  ones), cut to the policy's target at once, and the smaller model trains the GDP
                  phase's epochs at its learning rate.

Both then fine-tune like GDP's model. Reported: accuracies, the FLOPs kept and the units each
group lost (``removed_by_group``, as GDP's ``finalize`` report has it), which shows how a method
spread the cut over the layers.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

__all__ = ["COMPARE_METHODS", "run_comparison"]

COMPARE_METHODS = ("polarization", "magnitude", "activation", "taylor")
#: training batches the data-driven one-shot methods score on
SCORE_BATCHES = 8

#: ``train_epochs(net, epochs, lr, phase)`` of the pipeline (SGD, cosine schedule)
TrainEpochs = Callable[[nn.Module, int, float, str], None]


def _one_shot(method: str, model: nn.Module, policy: Any, train: Any, example: torch.Tensor,
              seed: int) -> tuple[nn.Module, dict[str, int]]:
    import gdp_graph as G
    from gdp_graph.importance import one_shot_plan, score_units
    from gdp_graph.policy import resolve

    analysis = G.analyze(model, example)
    resolution = resolve(policy, analysis.groups, analysis.blocks)
    train.set_epoch(seed)
    scores = score_units(analysis, method, train, lambda out, batch: F.cross_entropy(out, batch[1]),
                         max_batches=SCORE_BATCHES)
    plan, _ = one_shot_plan(analysis, scores, resolution)
    return G.rewrite(analysis, plan), {str(g): n for g, n in plan.removed_counts(analysis).items() if n}


def run_comparison(method: str, *, model: nn.Module, policy: Any, s: Any, train: Any, test: Any,
                   held: Optional[Any], device: torch.device, console: Console, seed: int, autocast: bool,
                   train_epochs: TrainEpochs, example: torch.Tensor, memory_format: torch.memory_format
                   ) -> dict[str, Any]:
    """Prune ``model`` (the pretrained weights, modified in place: pass a copy) by ``method``
    on the command's schedule ``s`` (a ``pipeline.CifarPreset``); returns its test (and
    held-out) accuracy after fine-tuning and the FLOPs it keeps."""
    from gdp_graph.gates.attach import attach
    from gdp_graph.graph.cost import model_cost
    from gdp_graph.recipes.cifar10.gdp_phase import gdp_phase
    from gdp_graph.recipes.cifar10.training import evaluate

    from gdp_graph.report.console import styled

    torch.manual_seed(seed)
    console.print(styled((f"compare: {method}", "bold"), " on the same schedule"))
    before = model_cost(model, (example[:1],)).flops
    if method == "polarization":
        gated = attach(model, policy=policy, example_inputs=example, total_steps=max(1, s.gdp_epochs * len(train)),
                       steps_per_epoch=len(train), gate_lr=s.gate_lr)
        gated.to(device, memory_format=memory_format)
        pruned, finalized, _ = gdp_phase(gated, train, epochs=s.gdp_epochs, lr=s.gdp_lr, gate_lr=s.gate_lr,
                                         device=device, autocast=autocast, console=console, trajectory=[],
                                         on_finalized=lambda *_: None)
        removed = finalized.to_dict()["removed_by_group"]
    else:
        pruned, removed = _one_shot(method, model, policy, train, example, seed)
        pruned = pruned.to(device, memory_format=memory_format)
        train_epochs(pruned, s.gdp_epochs, s.gdp_lr, f"{method} (pruned)")
    train_epochs(pruned, s.finetune_epochs, s.finetune_lr, f"{method} finetune")
    out = {"acc_finetuned": evaluate(pruned, test, device=device)["accuracy"],
           "kept": model_cost(pruned.cpu(), (example[:1].cpu(),)).flops / before, "removed_by_group": removed}
    pruned.to(device)
    if held is not None:
        out["heldout_acc_finetuned"] = evaluate(pruned, held, device=device)["accuracy"]
    return out
