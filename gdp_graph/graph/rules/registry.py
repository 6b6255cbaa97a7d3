"""The one registry of op rules, keyed by module type, function, or method name.

A rule says how an op moves, ties, consumes or creates channels (``propagate``) and, where the
op carries channel counts in its parameters or arguments, how to rewrite it once some channels
are gone (``rewrite``). Adding support for an op is adding one small rule::

    from gdp_graph.graph.rules import OpRule, register_rule

    @register_rule(MyScale)                      # a module type, a function, or a method name
    class MyScaleRule(OpRule):
        def propagate(self, ctx):
            out = ctx.passthrough(0)             # channels flow through unchanged
            ctx.param_member("weight", dim=0, labels=out.on(1).labels)
            return out
        def rewrite_module(self, module, rctx):
            keep = rctx.out_keep(dim=1)
            return rctx.slice_params(module, {"weight": {0: keep}})

An op with no rule is refused: every channel touching it is frozen, with the op named.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Union

from torch import nn

RuleKey = Union[type, Callable[..., Any], str]


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


def register_rule(*keys: RuleKey, replace: bool = False):
    """Register a rule (an :class:`OpRule` subclass or a ``propagate(ctx)`` function) for keys.

    Keys are module classes (subclasses match too), functions as they appear as fx targets
    (``torch.cat``, ``operator.add``, ``torch.nn.functional.relu``), or method names
    (``"view"``). Registering a key twice raises unless ``replace=True``.
    """
    if not keys:
        raise ValueError("register_rule needs at least one key")

    def decorator(obj):
        rule = obj() if inspect.isclass(obj) else _FunctionRule(obj)
        for key in dict.fromkeys(keys):  # aliases (F.pixel_shuffle is torch.pixel_shuffle) once
            if key in _RULES and not replace:
                raise ValueError(f"a rule for {describe_key(key)} is already registered; pass replace=True")
            _RULES[key] = rule
        return obj

    return decorator


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
        return _RULES.get(key)
    except TypeError:  # unhashable target
        return None


def registered_keys() -> list[RuleKey]:
    return list(_RULES)
