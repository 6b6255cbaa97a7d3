"""The one registry of op rules, keyed by module type, function, or method name.

A rule says how an op moves, ties, consumes or creates channels (``propagate``) and, where the
op carries channel counts in its parameters or arguments, what changes once some channels are
gone: ``resize`` describes which indices of a module's tensors are kept (a :class:`Resize`;
every consumer of the plan's slice map, :mod:`gdp_graph.prune.slices`, applies it), ``sizes``
gives the module's size attributes (``in_features``) for the new tensor shapes, and
``rewrite_args`` patches a call's arguments in the pruned graph. Adding support for an op is
adding one small rule::

    from gdp_graph.graph.rules import OpRule, register_rule

    @register_rule(MyScale)                      # a module type, a function, or a method name
    class MyScaleRule(OpRule):
        def propagate(self, ctx):
            out = ctx.passthrough(0)             # channels flow through unchanged
            track = out.on(1)                    # None when the input's channels are untracked
            if track is not None:
                ctx.member(track.labels, "param", 0, "weight")   # weight's dim 0 follows them
            return out

The default ``resize`` slices every tensor a ``member(labels, role, dim, param)`` of the module's
node names along that dim (here ``weight`` along 0), so a rule that records its members needs
no more; override it for anything else (a weight whose input dim shrinks too)::

        def resize(self, module, rctx):
            return Resize({"weight": ((0, rctx.out_kept(1)),)})   # kept indices per dim

The common case of a channel-wise layer is one line (:func:`register_channelwise`)::

    register_channelwise(MyScale, params=("weight",))

A module type with a rule is traced as one leaf (its forward is not traced through), so the
rule is what the analysis sees. An op with no rule is refused: every channel touching it is
frozen, with the op named. A module traced through (no rule) whose tensors shrink keeps its
size attributes in step through :func:`register_sizes`.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

RuleKey = Union[type, Callable[..., Any], str]


def copy_to_resize(module: nn.Module, replaced: Sequence[str]) -> nn.Module:
    """A deep copy of ``module`` that does not clone the tensors named in ``replaced`` (the
    caller sets smaller ones at once): cloning a ViT-B's weights only to drop them took half
    of its rewrite."""
    memo = {id(t): t for name in replaced if (t := getattr(module, name, None)) is not None}
    return copy.deepcopy(module, memo)


def kept_slices(module: nn.Module, masks: Mapping[str, Sequence[tuple[int, torch.Tensor]]]) -> dict:
    """:data:`Slices` from keep masks (a bool per position of a dim) of the tensors ``module``
    has (a bias may be None): dims where every position is kept are left out, and tensors left
    with none."""
    out = {}
    for name, pairs in masks.items():
        if getattr(module, name, None) is None:
            continue
        kept = tuple((dim, mask.nonzero().flatten()) for dim, mask in pairs if not bool(mask.all()))
        if kept:
            out[name] = kept
    return out


Slices = Mapping[str, tuple[tuple[int, torch.Tensor], ...]]
"""Tensor name -> ``(dim, kept indices)`` pairs, applied in order with ``index_select``."""


@dataclass(frozen=True)
class Resize:
    """What a rule's ``resize`` says about a module: the kept indices per dim of its tensors
    (local names: ``"weight"``; only tensors that lose something), and attributes to set beyond
    what ``sizes`` derives from the new shapes (e.g. a LayerNorm without weights)."""

    slices: Slices = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)


class OpRule:
    """Base class of op rules. ``propagate`` is required; the other hooks default to what the
    members recorded by ``propagate`` say (``resize``) or to no change."""

    #: True when the op can run unchanged whatever the channel counts (activations, adds).
    resizable: bool = True

    def propagate(self, ctx):  # pragma: no cover - interface
        raise NotImplementedError

    def resize(self, module: nn.Module, rctx) -> Resize:
        """The slices of ``module``'s tensors once the plan is applied (``rctx``: a
        :class:`~gdp_graph.prune.slices.ResizeContext` of the module's call). Default: each
        tensor named by a member of the call (``ctx.member(labels, role, dim, "weight")``)
        keeps the kept positions of its labels along that dim."""
        return Resize(rctx.member_slices())

    def sizes(self, module: nn.Module, shapes: Mapping[str, torch.Size]) -> dict[str, Any]:
        """The size attributes of ``module`` (``in_features``...) given the new shapes of its
        tensors (every tensor, changed or not, by local name). Default: none."""
        return {}

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
        if inspect.isclass(obj) and "rewrite_module" in vars(obj):
            raise TypeError(f"{obj.__qualname__}.rewrite_module is no longer called: describe the kept indices "
                            f"with resize(module, rctx) -> Resize instead (see gdp_graph.graph.rules.registry)")
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


SizesFn = Callable[[nn.Module, Mapping[str, torch.Size]], dict[str, Any]]
#: size attributes of modules traced through (no rule), by type or "module.QualName" path
_SIZES: dict[Union[type, str], SizesFn] = {}


def register_sizes(key: Union[type, str], sizes: SizesFn) -> None:
    """Register how a module type that is traced through (it has no rule; its tensors shrink as
    the ``get_attr`` nodes of the graph say) sets its size attributes from its tensors' new
    shapes: ``sizes(module, {"weight": torch.Size([...]), ...}) -> {"attribute": value}``.

    ``key`` is the class, or its import path (``"package.module.Class"``) for a class of an
    optional library: it is matched against the classes of the model, and never imported here.
    """
    _SIZES[key] = sizes


def sizes_of(module: nn.Module) -> Optional[SizesFn]:
    """The size hook of ``module``: its rule's ``sizes`` where its class (or a base) has a rule,
    else one registered with :func:`register_sizes` (by class or import path), else None."""
    rule = lookup(module)
    if rule is not None:
        return rule.sizes
    for cls in type(module).__mro__:
        found = _SIZES.get(cls) or _SIZES.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    return None

