"""A private copy of a model to trace: parameters that share the user's storage in new objects,
cloned buffers, and modules copied as ``copy.deepcopy`` would, without its per-attribute
dispatch (stage 1's first step, :func:`gdp_graph.graph.trace.trace`)."""

from __future__ import annotations

import contextlib
import copy
import copyreg
import functools
import warnings
from collections import OrderedDict
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["attributes_restored", "deepcopy_model", "private_copy"]


def private_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` to trace, in eval mode, whose parameters share the user's storage.

    Cloning every weight cost more than the rest of the analysis on a ViT-B (0.4 s of 1.4 s);
    the analysis only reads weights, and every stage that changes them (gates, rewrite,
    finalize) deep-copies the traced module first. The parameters are new objects (so a
    ``.to()`` or ``.data =`` on the copy never reaches the user's model); buffers, which a
    forward in train mode updates in place, are cloned (they are small). Modules are copied as
    ``copy.deepcopy`` would (:func:`_copy_module`), without its per-attribute dispatch.
    """
    lazy = (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)  # no data yet: deep-copied
    memo: dict[int, Any] = {}
    for p in model.parameters():
        if not issubclass(type(p), lazy):  # not isinstance: Parameter's metaclass answers that in Python
            memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
    for b in model.buffers():
        if not issubclass(type(b), lazy):
            memo[id(b)] = b.clone()
    return _copy_module(model, memo)


def deepcopy_model(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """``copy.deepcopy(value, memo)`` without torch's own deprecation warning for ``LeafSpec``: a
    graph made by ``torch.export`` keeps pytree specs whose copy goes through that deprecated
    class in torch 2.13 (nothing of ours or the user's to change), and every gated or pruned
    language model printed it twice."""
    if isinstance(value, nn.Module):
        # deepcopy refuses a tensor that is no graph leaf, such as the weight the old
        # torch.nn.utils.weight_norm hook leaves on its module (it computes it again each forward)
        memo = {} if memo is None else memo
        for module in value.modules():
            for attribute in vars(module).values():
                if isinstance(attribute, torch.Tensor) and attribute.grad_fn is not None:
                    memo.setdefault(id(attribute), attribute.detach().clone())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        return copy.deepcopy(value, memo)


#: values ``copy.deepcopy`` returns as they are
_ATOMS = (int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size, torch.layout,
          torch.memory_format)


@functools.lru_cache(maxsize=None)
def _plain_module_class(cls: type) -> bool:
    """Whether ``copy.deepcopy`` copies modules of ``cls`` by the default protocol: a new object
    whose state is its ``__dict__`` (no ``__deepcopy__``, ``__reduce__``, ``__getstate__`` or
    slots of its own)."""
    return (getattr(cls, "__deepcopy__", None) is None and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__ and cls.__getstate__ is nn.Module.__getstate__
            and not copyreg._slotnames(cls))


#: the exact types of :data:`_ATOMS` (and bool): one set lookup for most attributes
_ATOM_TYPES = frozenset(_ATOMS + (bool,))
#: a module's hook tables and buffer-name sets: mostly empty, then a new empty one is the copy
_TABLES = frozenset((dict, OrderedDict, set))
#: what ``nn.Module.__setstate__`` adds when an old pickle lacks it
_MODULE_STATE = frozenset(("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
                           "_forward_hooks_always_called", "_state_dict_hooks", "_state_dict_pre_hooks",
                           "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
                           "_non_persistent_buffers_set", "_is_full_backward_hook", "_backward_pre_hooks"))
#: the attributes holding submodules, parameters and buffers (copied entry by entry)
_CHILDREN = frozenset(("_modules", "_parameters", "_buffers"))


def _copy_value(value: Any, memo: dict[int, Any]) -> Any:
    if isinstance(value, torch.Tensor) and id(value) in memo:
        return memo[id(value)]  # a parameter or buffer: its copy, made before the walk
    if isinstance(value, torch.Tensor) and value.grad_fn is not None:
        # the weight the old torch.nn.utils.weight_norm hook computed (it computes it again in
        # every forward): deepcopy refuses a tensor that is not a graph leaf
        return value.detach().clone()
    if (type(value) in _ATOM_TYPES or isinstance(value, _ATOMS)
            or (type(value) is tuple and all(isinstance(v, _ATOMS) for v in value))):
        return value
    if type(value) in _TABLES and not value:
        return type(value)()
    if isinstance(value, nn.Module):
        return _copy_module(value, memo)
    return deepcopy_model(value, memo)


def _copy_module(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """``copy.deepcopy(module, memo)``, an order of magnitude faster on a model of plain modules:
    submodules recurse here, and immutable or empty attributes are taken without a deep copy
    (tested inline: a call per attribute was most of the copy, ~20 attributes a module)."""
    if id(module) in memo:
        return memo[id(module)]
    cls = type(module)
    if not _plain_module_class(cls):
        return deepcopy_model(module, memo).eval()
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = module.__getstate__()
    for key, value in state.items():
        kind = type(value)
        if kind in _ATOM_TYPES:
            continue
        if kind in _TABLES and not value:
            state[key] = kind()
        elif key in _CHILDREN:
            state[key] = kind((k, _copy_value(v, memo)) for k, v in value.items())
        else:
            state[key] = _copy_value(value, memo)
    state["training"] = False  # the copy is in eval mode: no second walk to set it
    if cls.__setstate__ is nn.Module.__setstate__ and _MODULE_STATE <= state.keys():
        new.__dict__.update(state)  # all Module.__setstate__ does when no attribute of an old pickle is missing
    else:
        new.__setstate__(state)  # e.g. a convolution's, which fills in a missing padding mode
    copy._keep_alive(module, memo)  # as deepcopy does: the memo's ids stay valid
    return new


@contextlib.contextmanager
def attributes_restored(module: nn.Module) -> Iterator[None]:
    """Put every submodule's attributes back as they were once the block ends (those added
    removed).

    A forward that caches values on its modules (YOLOv8's ``Detect``: ``self.anchors,
    self.strides = make_anchors(...)``, ``self.shape = shape``) leaves fx proxies, or fake
    tensors and symbolic sizes, there when a front end traces it; the copy that keeps the
    model's class then failed on them (a fake tensor has no data to copy)."""
    saved = [(m, dict(m.__dict__)) for m in module.modules()]
    try:
        yield
    finally:
        for m, attributes in saved:
            m.__dict__.clear()
            m.__dict__.update(attributes)
