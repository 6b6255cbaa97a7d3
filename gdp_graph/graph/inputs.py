"""Example inputs as models take them, and outputs as models return them.

Example inputs may be one tensor, a tuple of positional inputs, or a dict of keyword inputs
(``{"input_ids": ids, "attention_mask": mask}``, what a Hugging Face model is called with).
They are bound to the model's ``forward`` signature once: the traced graph then takes the
given inputs positionally, in signature order, and every parameter that was not given is
fixed to its default while tracing (so ``labels=None`` specializes away the branch on it), as
is every plain Python value given (``return_dict=False``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
import torch.utils._pytree as pytree

from gdp_graph.errors import GdpError


#: forward parameters that ask for returned state (not tensors) and the value that turns it off;
#: fixed to that value while tracing unless the example inputs give them
STATE_FLAGS: dict[str, Any] = {"use_cache": False}


class InputError(GdpError, ValueError):
    """Example inputs that do not fit the model's forward signature."""


@dataclasses.dataclass(frozen=True)
class BoundInputs:
    """Example inputs bound to ``forward``'s signature."""

    args: tuple[Any, ...]  #: as the user gave them (positional part)
    kwargs: dict[str, Any]  #: as the user gave them (keyword part)
    positional: Optional[tuple[Any, ...]]  #: every parameter up to the last given one, in order
    fixed: dict[str, Any]  #: parameters fixed while tracing: defaults of those not given, flags
    variadic: tuple[str, ...] = ()  #: ``*args``/``**kwargs`` given values, as spelled (fx cannot)

    def call(self, fn: Callable[..., Any]) -> Any:
        """Call ``fn`` (the user's model, or a module keeping its signature) on the inputs."""
        return fn(*self.args, **self.kwargs)

    def describe(self) -> str:
        def shape(v: Any) -> str:
            return repr(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__
        parts = [shape(v) for v in self.args] + [f"{k}={shape(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A tensor, tuple/list or dict of example inputs as ``(args, kwargs)``."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):  # a tokenizer's BatchEncoding is a Mapping, not a dict
        bad = [k for k in example_inputs if not isinstance(k, str)]
        if bad:
            raise InputError(f"keyword example inputs need string keys, got {bad[0]!r}")
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise InputError(f"example inputs must be a tensor, a tuple of positional inputs or a dict of "
                     f"keyword inputs, got {type(example_inputs).__name__}")


def bind_inputs(forward: Callable[..., Any], example_inputs: Any) -> BoundInputs:
    """Bind example inputs to ``forward``'s signature (see the module docstring)."""
    args, kwargs = split_inputs(example_inputs)
    signature = inspect.signature(forward)
    params = list(signature.parameters.values())
    kwargs = {**_state_off(signature, args, kwargs), **kwargs}
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InputError(f"example inputs do not fit {_name(forward)}{signature}: {exc}") from None
    variadic = [("*" if p.kind == p.VAR_POSITIONAL else "**") + p.name for p in params
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and bound.arguments.get(p.name)]
    if variadic:  # fx gives *args/**kwargs one placeholder each: only torch.export takes them
        return BoundInputs(args, kwargs, None, {}, tuple(variadic))
    params = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    given = [i for i, p in enumerate(params) if p.name in bound.arguments]
    last = max(given, default=-1)
    positional = []
    for p in params[:last + 1]:
        if p.name in bound.arguments:
            positional.append(bound.arguments[p.name])
        elif p.default is not p.empty:
            positional.append(p.default)
        else:  # cannot happen after a successful bind
            raise InputError(f"{_name(forward)}: parameter {p.name!r} has no value")
    fixed = {p.name: p.default for p in params if p.name not in bound.arguments and p.default is not p.empty}
    # flags given by value (return_dict=False, use_cache=False) select code paths: fix them too
    fixed.update({k: v for k, v in bound.arguments.items() if is_flag(v)})
    return BoundInputs(args, kwargs, tuple(positional), fixed)


def _state_off(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The :data:`STATE_FLAGS` that ``forward`` takes as keywords and the inputs leave unset."""
    names = list(signature.parameters)
    given = set(names[:len(args)]) | set(kwargs)
    return {k: v for k, v in STATE_FLAGS.items() if k in signature.parameters and k not in given
            and signature.parameters[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                 inspect.Parameter.KEYWORD_ONLY)}


def is_flag(value: Any) -> bool:
    """A plain Python value that tracing may specialize on (not a tensor or container)."""
    return value is None or isinstance(value, (bool, int, float, str))


def _name(fn: Callable[..., Any]) -> str:
    owner = getattr(fn, "__self__", None)
    return f"{type(owner).__name__}.forward" if owner is not None else getattr(fn, "__qualname__", "forward")


def output_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor of a model output, in a fixed order: tensors, tuples, lists, dicts (sorted
    by key), dataclasses and ``ModelOutput``s (their set fields), nested."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):  # ModelOutput is a dict too: its unset fields are absent
        return [t for k in sorted(value, key=str) for t in output_tensors(value[k])]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in output_tensors(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in output_tensors(getattr(value, f.name))]
    leaves = pytree.tree_leaves(value)  # any other registered container
    if len(leaves) == 1 and leaves[0] is value:
        return []
    return [t for leaf in leaves for t in output_tensors(leaf)]
