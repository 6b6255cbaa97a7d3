"""The few-line user story::

    gated = gdp_graph.attach(model, policy="cifar_resnet", example_inputs=x, total_steps=steps)
    gate_opt = gated.gate_optimizer()         # Adam on the gates; the weights keep the user's optimizer
    for x, y in loader:                       # the user's own loop, optimizer, autocast, DDP
        loss = F.cross_entropy(gated(x), y) + gated.penalty()   # lambda * regularizer(gates)
        loss.backward(); optimizer.step(); gate_opt.step(); optimizer.zero_grad(); gate_opt.zero_grad()
        gated.step()                          # anneal epsilon, project, steer lambda, fix at fix_at
    pruned, report = gdp_graph.finalize(gated)   # the exact smaller nn.Module

``model`` itself is never modified: :func:`attach` traces a deep copy.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph.analysis import analyze
from gdp_graph.gates.init import DATA_FREE_SCORERS, init_from_scores
from gdp_graph.graph.frontend_export import has_token_inputs
from gdp_graph.gates.model import DEFAULT_GATE_LR, GatedModel
from gdp_graph.policy import Policy, load_policy, policy_from_dict, resolve

__all__ = ["attach", "as_policy"]

PolicyLike = Union[Policy, str, "os.PathLike[str]", Mapping[str, Any], None]


def as_policy(policy: PolicyLike) -> Policy:
    """A :class:`Policy` from a policy, a YAML path or text, a shipped policy name
    (``"cifar_resnet"``), a plain dict, or ``None`` (the built-in default)."""
    if policy is None:
        return Policy.default()
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping):
        return policy_from_dict(policy)
    if isinstance(policy, (str, os.PathLike)):
        return load_policy(policy)
    raise TypeError(f"policy must be a Policy, a path, YAML text, a dict or None, not {type(policy).__name__}")


def attach(model: nn.Module, policy: PolicyLike = None, *,
           example_inputs: Union[torch.Tensor, Sequence[Any], Mapping[str, Any]], total_steps: Optional[int] = None,
           steps_per_epoch: Optional[int] = None, init_gate: float = 0.99,
           gate_lr: float = DEFAULT_GATE_LR) -> GatedModel:
    """Analyse ``model`` (a traced copy; ``model`` is left untouched) and return it with gates.

    Args:
        policy: what to gate and how to train the gates (see :func:`as_policy`).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs
            (``model(**inputs)``; the gated model is then called the same way).
        total_steps: training iterations the gates will be trained for (the ``gdp``
            regularizer anneals epsilon over them).
        steps_per_epoch: iterations per epoch, for schedules that step per epoch.
        init_gate: the value every ``gdp`` gate starts at (the largest one, with a ranked
            ``regularizer.init``: ``magnitude`` is applied here, ``activation`` and ``taylor``
            need data: :func:`gdp_graph.importance.init_gates`).
        gate_lr: the gates' Adam learning rate (``gate_optimizer()``'s default).

    The returned :class:`GatedModel` is in ``model``'s train/eval mode, on its device.

    Raises:
        gdp_graph.policy.PolicyError: the policy does not validate.
        gdp_graph.graph.trace.TraceError: the model cannot be traced or run on the inputs.
        gdp_graph.gates.model.GateError: the schedule lengths are missing or invalid.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach() needs an nn.Module, got {type(model).__name__}")
    resolved = as_policy(policy)
    gated = None
    for dynamic in ("batch", "tokens"):
        analysis = analyze(model, example_inputs, count_flops=True, dynamic=dynamic)  # the cost model needs them
        resolution = resolve(resolved, analysis.groups, analysis.blocks)
        gated = GatedModel(analysis, resolution, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                           init_gate=init_gate, gate_lr=gate_lr)
        # the gates stay in an exported graph (no class with gate hooks, gates.hooks): export it
        # again with the sequence length of token inputs symbolic, so it trains at any length
        if not (isinstance(gated.module, fx.GraphModule) and analysis.traced.front_end == "export"
                and analysis.traced.inputs is not None and has_token_inputs(analysis.traced.inputs)):
            break
    reg = resolved.regularizer
    if reg.name == "gdp" and reg.init in DATA_FREE_SCORERS:  # regularizer.init: magnitude
        init_from_scores(gated, DATA_FREE_SCORERS[reg.init](gated.analysis), reg.init_spread,
                         per_group=reg.init_rank == "group")
    elif reg.name == "gdp" and reg.init != "uniform":  # activation, taylor: init_gates with batches
        gated.init_pending = reg.init
    gated.train(model.training)
    return gated
