"""The one registry of op rules, keyed by module type, function, or method name.

A rule says how an op moves, ties, consumes or creates channels (``propagate``) and, where the
op carries channel counts in its parameters or arguments, how to rewrite it once some channels
are gone (``rewrite_module`` for a module's parameters, ``rewrite_args`` for a call's
arguments). Adding support for an op is adding one small rule::

    from gdp_graph.graph.rules import OpRule, register_rule

    @register_rule(MyScale)                      # a module type, a function, or a method name
    class MyScaleRule(OpRule):
        def propagate(self, ctx):
            out = ctx.passthrough(0)             # channels flow through unchanged
            track = out.on(1)                    # None when the input's channels are untracked
            if track is not None:
                ctx.member(track.labels, "param", 0, "weight")
            return out
        def rewrite_module(self, module, rctx):
            new = copy_to_resize(module, ("weight",))   # a deep copy that skips the old weight
            new.weight = nn.Parameter(module.weight.detach()[rctx.out_keep(1)])
            return new

The common case of a channel-wise layer is one line (:func:`register_channelwise`)::

    register_channelwise(MyScale, params=("weight",))

A module type with a rule is traced as one leaf (its forward is not traced through), so the
rule is what the analysis sees. An op with no rule is refused: every channel touching it is
frozen, with the op named.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

RuleKey = Union[type, Callable[..., Any], str]


def copy_to_resize(module: nn.Module, replaced: Sequence[str]) -> nn.Module:
    """A deep copy of ``module`` that does not clone the tensors named in ``replaced`` (the
    caller sets smaller ones at once): cloning a ViT-B's weights only to drop them took half
    of its rewrite."""
    memo = {id(t): t for name in replaced if (t := getattr(module, name, None)) is not None}
    return copy.deepcopy(module, memo)


def keep_along(t: torch.Tensor, dim: int, keep: torch.Tensor) -> torch.Tensor:
    """``t`` restricted to the kept positions of ``dim`` (index_select: 4-6x faster than a
    boolean mask on large weights), or ``t`` itself when every position is kept."""
    return t if bool(keep.all()) else t.index_select(dim, keep.nonzero().flatten())


def own_storage(t: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``t`` in storage of its own: a rewritten layer never shares the source's weights (the
    traced model's are the user's)."""
    return t.clone() if t.data_ptr() == original.data_ptr() else t


class OpRule:
    """Base class of op rules. ``propagate`` is required; rewrite hooks default to no change."""

    #: True when the op can run unchanged whatever the channel counts (activations, adds).
    resizable: bool = True

    def propagate(self, ctx):  # pragma: no cover - interface
        raise NotImplementedError

    def rewrite_module(self, module: nn.Module, rctx) -> nn.Module:
        """Return the module to use in the pruned model (default: the same module)."""
        return module

    def rewrite_args(self, rctx) -> Optional[tuple[tuple, dict]]:
        """Return new ``(args, kwargs)`` for the pruned node, or None to keep them."""
        return None


class _FunctionRule(OpRule):
    def __init__(self, fn: Callable):
        self._fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "rule")

    def propagate(self, ctx):
        return self._fn(ctx)


_RULES: dict[Any, OpRule] = {}
#: rules for whole families of classes called as functions (dataclass outputs, ModelOutput)
_CLASS_RULES: list[tuple[Callable[[type], bool], OpRule]] = []


def register_rule(*keys: RuleKey, replace: bool = False):
    """Register a rule (an :class:`OpRule` subclass or a ``propagate(ctx)`` function) for keys.

    Keys are module classes (subclasses match too), functions as they appear as fx targets
    (``torch.cat``, ``operator.add``, ``torch.nn.functional.relu``), or method names
    (``"view"``). Registering a key twice raises unless ``replace=True``.
    """
    if not keys:
        raise ValueError("register_rule needs at least one key")

    def decorator(obj):
        _store(keys, obj() if inspect.isclass(obj) else _FunctionRule(obj), replace)
        return obj

    return decorator


def _store(keys: Sequence[RuleKey], rule: OpRule, replace: bool) -> None:
    for key in dict.fromkeys(keys):  # aliases (F.pixel_shuffle is torch.pixel_shuffle) once
        if key in _RULES and not replace:
            raise ValueError(f"a rule for {describe_key(key)} is already registered; pass replace=True")
        _RULES[key] = rule


def describe_key(key: RuleKey) -> str:
    if isinstance(key, str):
        return f"method '.{key}()'"
    if inspect.isclass(key):
        return f"module {key.__module__}.{key.__qualname__}"
    mod = getattr(key, "__module__", None) or ""
    return f"function {mod + '.' if mod else ''}{getattr(key, '__name__', repr(key))}"


def lookup(key: Any) -> Optional[OpRule]:
    """The rule for a module instance's type (walking its MRO), a function, or a method name."""
    if isinstance(key, nn.Module):
        for cls in type(key).__mro__:
            rule = _RULES.get(cls)
            if rule is not None:
                return rule
        return None
    try:
        rule = _RULES.get(key)
    except TypeError:  # unhashable target
        return None
    if rule is None and inspect.isclass(key):
        rule = next((r for accepts, r in _CLASS_RULES if accepts(key)), None)
    return rule


def register_class_rule(accepts: Callable[[type], bool]):
    """Register a rule for every class ``accepts(cls)`` (e.g. dataclasses) built in forward."""
    def decorator(obj):
        _CLASS_RULES.append((accepts, obj() if inspect.isclass(obj) else _FunctionRule(obj)))
        return obj
    return decorator


def registered_keys() -> list[RuleKey]:
    return list(_RULES)


def has_leaf_rule(module: nn.Module) -> bool:
    """Whether ``module`` must be traced as one leaf because a rule describes its forward.

    True when its own class has a rule, or it inherits one without overriding ``forward``
    (a subclass with its own forward, a LoRA linear say, is not what the rule describes).
    """
    for cls in type(module).__mro__:
        if cls in _RULES:
            return cls is type(module) or type(module).forward is cls.forward
    return False


class _ChannelwiseRule(OpRule):
    """Channels pass through unchanged along ``dim``; the named tensors are sliced along 0."""

    def __init__(self, tensors: tuple[str, ...], dim: int):
        self.tensors = tensors
        self.dim = dim

    def propagate(self, ctx):
        out = ctx.passthrough(0)
        track = out.on(self.dim % ctx.out.dim())
        if track is not None and track.single():
            for name in self.tensors:
                ctx.member(track.labels, "param", 0, name)
        elif track is not None:
            ctx.freeze(track.labels, "a channel-wise layer over channels tied to another dimension")
        return out

    def rewrite_module(self, module: nn.Module, rctx) -> nn.Module:
        keep = rctx.out_keep(self.dim)
        if bool(keep.all()):
            return module
        new = copy_to_resize(module, self.tensors)
        index = keep.nonzero().flatten()
        for name in self.tensors:
            old = getattr(module, name)
            sliced = old.detach().index_select(0, index)  # index_select copies
            if isinstance(old, nn.Parameter):
                setattr(new, name, nn.Parameter(sliced, requires_grad=old.requires_grad))
            else:
                setattr(new, name, sliced)  # a registered buffer stays a buffer
        return new


def register_channelwise(module_type: type, params: Sequence[str] = ("weight",), dim: int = 1,
                         replace: bool = False) -> type:
    """Register a layer that acts on each channel separately (a learned scale, a per-channel
    activation): channels along ``dim`` of its first input flow through, and each tensor
    attribute in ``params`` (parameters or buffers, one entry per channel along their dim 0)
    keeps only the kept channels. Returns ``module_type``.

    Example: ``register_channelwise(LayerScale, params=("gamma",), dim=-1)``.
    """
    if not (inspect.isclass(module_type) and issubclass(module_type, nn.Module)):
        raise ValueError(f"register_channelwise needs an nn.Module subclass, got {module_type!r}")
    _store((module_type,), _ChannelwiseRule(tuple(params), dim), replace)
    return module_type
