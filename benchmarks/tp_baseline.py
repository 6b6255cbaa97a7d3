"""Torch-Pruning (https://github.com/VainF/Torch-Pruning, ``pip install 'gdp-graph[bench]'``) as
a baseline of ``cifar_methods.py``: the methods ``tp_group_l1`` and ``tp_bn_scale``.

Protocol: Torch-Pruning's published ResNet-56 / CIFAR-10 recipe (``reproduce/main.py`` and
``reproduce/readme.md`` of 1.6.x, rows Group-L1 and Group-BN), on a deep copy of the model:

* its own pruner (``BasePruner``, of which ``MagnitudePruner`` is now an alias, or
  ``BNScalePruner``) with ``global_pruning=True`` (one channel ranking over the whole network),
  ``pruning_ratio=1.0`` and ``max_pruning_ratio=1.0`` spread linearly over
  ``iterative_steps=400``, the final classifier ignored (every Linear or conv whose output width
  is the number of classes);
* importances: ``group_l1`` is ``GroupMagnitudeImportance(p=1)`` (their ``--method l1``:
  ``MagnitudeImportance(p=1)``, the same class; L1 norm summed over every layer of a dependency
  group, mean-reduced and mean-normalized per group); ``bn_scale`` is ``BNScaleImportance()``
  with ``BNScalePruner(reg=1e-5)`` (their ``--method slim --reg 1e-5``);
* the model is pruned step by step, the importances recomputed on the shrinking model at
  each step, until the FLOPs fraction first reaches the target: their ``progressive_pruning``
  (stop at the first step whose speed-up reaches ``--speed-up``), so the channel ratio that
  meets a FLOPs target is found by their own schedule and no search over the ratio is needed.
  FLOPs are counted with ``gdp_graph.graph.cost.count_flops`` (FlopCounterMode), the counter
  ``cifar_methods.run_one`` reports, not ``tp.utils.count_ops_and_params``.

Deviations, both forced by the benchmark: (1) one shot from the pretrained weights, like
``magnitude``; the published Group-BN run first trains with ``BNScalePruner.regularize`` (an L1
push of ``1e-5 * sign(gamma)`` on every BN scale), which at this benchmark's learning rates and
6 epochs of 79 steps would move a scale by about 1e-4, less than the weight decay does, so it is
left out. (2) Landing: one step can remove a channel of a wide residual group, up to 2.7% of
ResNet-20's FLOPs at once, so exact landing is impossible; the published rule (first step at or
below the target) is kept when it lands within ``tolerance`` of the target, else the step before
is taken if it is within ``tolerance`` above; if neither is, a ``RuntimeError`` says so instead
of a run at unequal FLOPs.
"""

from __future__ import annotations

import copy
from importlib import metadata
from typing import Any

import torch
from torch import Tensor, nn

from gdp_graph.graph.cost import count_flops

__all__ = ["IMPORTANCES", "ITERATIVE_STEPS", "NORMALIZERS", "make_pruner", "prune_with_torch_pruning", "torch_pruning_version"]

IMPORTANCES = ("group_l1", "bn_scale")
ITERATIVE_STEPS = 400  # reproduce/main.py --iterative-steps
BN_REG = 1e-5  # reproduce/readme.md, Group-BN: --method slim --reg 1e-5
#: group normalizers the benchmark may ask for: the published one first
NORMALIZERS = ("mean", None)


def _torch_pruning() -> Any:
    try:
        import torch_pruning as tp
    except ImportError as e:
        raise ImportError("the Torch-Pruning baselines (tp_group_l1, tp_bn_scale) need torch-pruning, "
                          "a benchmark-only extra: pip install 'gdp-graph[bench]'") from e
    return tp


def torch_pruning_version() -> str:
    """The installed torch-pruning distribution's version (its ``__version__`` can lag behind)."""
    _torch_pruning()
    return metadata.version("torch-pruning")


def _classifiers(model: nn.Module, example_inputs: Tensor) -> list[nn.Module]:
    """Their recipe's ignored layers: every Linear or conv whose output width is the class count."""
    with torch.no_grad():
        classes = model(example_inputs).shape[1]
    return [m for m in model.modules()
            if (isinstance(m, nn.Linear) and m.out_features == classes)
            or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == classes)]


def make_pruner(model: nn.Module, example_inputs: Tensor, importance: str, *,
                iterative_steps: int = ITERATIVE_STEPS, normalizer: str | None = "mean") -> Any:
    """Torch-Pruning's pruner for ``importance`` with the published settings, acting on ``model``
    itself (which should be in eval mode: building the dependency graph runs a forward pass).
    ``normalizer``: how each group's importances are scaled before the global ranking (the
    published ``mean``, or None: raw importances, a tuning setting of cifar_fair.py)."""
    tp = _torch_pruning()
    if normalizer not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {normalizer!r}: expected one of {NORMALIZERS}")
    if importance == "group_l1":
        imp, pruner_class, extra = (tp.importance.GroupMagnitudeImportance(p=1, normalizer=normalizer),
                                    tp.pruner.BasePruner, {})
    elif importance == "bn_scale":
        imp, pruner_class, extra = (tp.importance.BNScaleImportance(normalizer=normalizer), tp.pruner.BNScalePruner,
                                    {"reg": BN_REG})
    else:
        raise ValueError(f"unknown importance {importance!r}: expected one of {IMPORTANCES}")
    return pruner_class(model, example_inputs, importance=imp, global_pruning=True, pruning_ratio=1.0,
                        max_pruning_ratio=1.0, iterative_steps=iterative_steps,
                        ignored_layers=_classifiers(model, example_inputs), **extra)


def _pruned_copy(model: nn.Module, example_inputs: Tensor, importance: str, iterative_steps: int, *,
                 target: float | None = None, steps: int | None = None,
                 normalizer: str | None = "mean") -> tuple[nn.Module, list[float]]:
    """A deep copy of ``model`` pruned step by step until its FLOPs fraction is at most ``target``
    (or for ``steps`` steps); also the FLOPs fraction after each step (index 0: the original)."""
    net = copy.deepcopy(model).eval()
    base = count_flops(net, (example_inputs,))
    pruner = make_pruner(net, example_inputs, importance, iterative_steps=iterative_steps, normalizer=normalizer)
    fractions = [1.0]
    while pruner.current_step < iterative_steps and (steps is None or pruner.current_step < steps):
        pruner.step()
        fractions.append(count_flops(net, (example_inputs,)) / base)
        if target is not None and fractions[-1] <= target:
            break
    return net, fractions


def prune_with_torch_pruning(model: nn.Module, example_inputs: Tensor, target_flops_fraction: float,
                             importance: str, *, iterative_steps: int = ITERATIVE_STEPS,
                             tolerance: float = 0.01, normalizer: str | None = "mean") -> nn.Module:
    """A pruned deep copy of ``model`` keeping ``target_flops_fraction`` +- ``tolerance`` of its
    FLOPs on ``example_inputs``, by Torch-Pruning's published global recipe with ``importance``
    ("group_l1" or "bn_scale") and ``normalizer`` (see :func:`make_pruner`); see the module
    docstring. ``model`` is left untouched; the copy is returned in ``model``'s train/eval mode."""
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}: expected one of {IMPORTANCES}")
    if not 0.0 < target_flops_fraction < 1.0:
        raise ValueError(f"target_flops_fraction must be in (0, 1), got {target_flops_fraction}")
    target = target_flops_fraction
    net, fractions = _pruned_copy(model, example_inputs, importance, iterative_steps, target=target,
                                  normalizer=normalizer)
    landed = fractions[-1]
    if landed > target + tolerance:
        raise RuntimeError(f"{importance}: {iterative_steps} steps reach only {landed:.4f} of the FLOPs, "
                           f"not {target:g}")
    if landed < target - tolerance:
        before = fractions[-2]
        if before > target + tolerance:
            raise RuntimeError(f"{importance}: step {len(fractions) - 1} jumps from {before:.4f} to {landed:.4f} "
                               f"of the FLOPs; no step lands within {tolerance:g} of {target:g}")
        net, replay = _pruned_copy(model, example_inputs, importance, iterative_steps, steps=len(fractions) - 2,
                                   normalizer=normalizer)
        if abs(replay[-1] - before) > 1e-9:
            raise RuntimeError(f"{importance}: replaying {len(replay) - 1} steps gave {replay[-1]:.6f} of the "
                               f"FLOPs, not {before:.6f}")
    net.train(model.training)
    return net
