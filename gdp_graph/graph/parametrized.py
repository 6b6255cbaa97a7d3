"""Weights a module computes from other tensors: ``weight_norm`` as a parametrization
(``torch.nn.utils.parametrizations.weight_norm``: ``weight`` from
``parametrizations.weight.original0`` and ``original1``) or as the older forward pre-hook
(``torch.nn.utils.weight_norm``: from ``weight_g`` and ``weight_v``), as HiFi-GAN, WaveNet
vocoders and Wav2Vec2's positional conv use them.

Rules read the computed tensor (``module.weight``) and say how to slice it, as for any weight;
the slice map slices what the module holds instead (:func:`original_slices`): the direction
``v`` like the weight, the magnitude ``g`` along the one dim weight_norm keeps apart. That is
exact for channels along that dim (whole normalized rows go); along any other dim the kept
rows' norms change, so those channels are inexact, as under a weight standardization
(:func:`computed_weight_facts`). Other parametrizations are refused.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["computed_tensors", "computed_weight_facts", "folded", "original_slices"]


def _weight_norm_hooks(module: nn.Module) -> list:
    from torch.nn.utils.weight_norm import WeightNorm  # the deprecated hook's class
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm)]


def _kept_apart(module: nn.Module) -> dict[str, Union[int, str]]:
    """Computed tensor name -> the dim weight_norm normalizes apart (-1: the whole tensor), or
    the name of a parametrization that is no weight_norm."""
    if not (module._forward_pre_hooks or parametrize.is_parametrized(module)):
        return {}  # the common case, asked for every layer call the analysis records
    from torch.nn.utils.parametrizations import _WeightNorm
    found: dict[str, Union[int, str]] = {}
    if parametrize.is_parametrized(module):
        for name, chain in module.parametrizations.items():
            only = chain[0] if len(chain) == 1 else None
            found[name] = only.dim if isinstance(only, _WeightNorm) else " then ".join(type(p).__name__ for p in chain)
    found.update({h.name: h.dim for h in _weight_norm_hooks(module)})
    return found


def computed_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, value)`` of every tensor ``module`` computes (not its own parameters)."""
    names = list(module.parametrizations) if parametrize.is_parametrized(module) else []
    return [(name, getattr(module, name)) for name in names] + \
        [(h.name, h.compute_weight(module)) for h in _weight_norm_hooks(module)]


def original_slices(module: nn.Module, name: str, pairs: Sequence[tuple[int, torch.Tensor]]) -> dict[str, tuple]:
    """The slices of the tensors ``module`` computes its ``name`` from, for ``pairs`` (slices of
    the computed tensor): ``{local tensor name: pairs}``; empty when ``name`` is not computed."""
    apart = _kept_apart(module).get(name)
    if not isinstance(apart, int):
        return {}
    along_apart = tuple((d, i) for d, i in pairs if apart >= 0 and d == apart)
    if parametrize.is_parametrized(module, name):
        magnitude, direction = f"parametrizations.{name}.original0", f"parametrizations.{name}.original1"
    else:
        magnitude, direction = f"{name}_g", f"{name}_v"
    return {direction: tuple(pairs), **({magnitude: along_apart} if along_apart else {})}


def computed_weight_facts(module: nn.Module, members: Sequence[tuple[torch.Tensor, Any]]) -> list[tuple]:
    """``(labels, reason, frozen)`` for the channels of a call of ``module`` (``members``: what
    its rule recorded) whose weight is computed: inexact along the dims weight_norm normalizes
    over, frozen under any other parametrization or on a layer other than a linear or conv."""
    facts = []
    for name, apart in _kept_apart(module).items():
        if isinstance(apart, str) or not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            what = f"parametrization {apart}" if isinstance(apart, str) else f"weight_norm on a {type(module).__name__}"
            facts += [(labels, f"its '{name}' is computed by {what}, which the rewrite cannot slice", True)
                      for labels, _ in members]
            continue
        produced = next((m.dim for _, m in members if m.role == "produce" and m.param == name), 0)
        for labels, m in members:
            if getattr(module, "groups", 1) > 1:
                dim = 0  # whole conv groups go: rows of the weight's dim 0 only
            elif m.param == name:
                dim = m.dim
            elif m.param is None:
                dim = 1 - produced  # the input side of a [out, in, ...] (or [in, out, ...]) weight
            else:
                continue  # the bias: the produced channels
            if dim != apart:
                facts.append((labels, f"weight_norm normalizes its '{name}' over them (dim={apart} kept apart)",
                              False))
    return facts


def folded(module: nn.Module) -> nn.Module:
    """``module`` itself when it computes no tensor, else a copy whose computed tensors are plain
    parameters holding their values (weight_norm removed): torch cannot pickle a parametrized
    module (its class is made on the fly), and plain source cannot rebuild a hook."""
    if not any(computed_tensors(m) for m in module.modules()):
        return module
    from gdp_graph.graph.model_copy import private_copy  # shares the weights' storage: nothing is cloned
    copy = private_copy(module)
    for original, made in list(zip(module.modules(), copy.modules())):  # listed before any is changed
        made.training = original.training  # the copy was made for tracing, in eval mode
        for hook in _weight_norm_hooks(made):
            torch.nn.utils.remove_weight_norm(made, hook.name)
        if parametrize.is_parametrized(made):
            _unparametrize(made)
    return copy


def _unparametrize(module: nn.Module) -> None:
    """What ``parametrize.remove_parametrizations(module, name, leave_parametrized=True)`` does
    for every name, without deleting the properties from the class: a copy shares its class
    with the original, whose properties must stay."""
    chains = module.parametrizations
    values = {name: (getattr(module, name).detach(), any(p.requires_grad for p in chain.parameters()))
              for name, chain in chains.items()}
    module.__class__ = type(module).__bases__[0]
    del module._modules["parametrizations"]
    for name, (value, requires_grad) in values.items():
        module.register_parameter(name, nn.Parameter(value, requires_grad=requires_grad))
    # weight_norm's hook converting old weight_g/weight_v checkpoints: a local function
    # (unpicklable), with nothing left to convert
    for key, hook in list(module._load_state_dict_pre_hooks.items()):
        if getattr(getattr(hook, "hook", None), "__module__", "") == "torch.nn.utils.parametrizations":
            del module._load_state_dict_pre_hooks[key]

