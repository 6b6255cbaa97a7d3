"""Removed residual branches in a model that keeps its class.

A removed block is ``y = x + f(x)`` with ``f`` reduced to its constant term ``c`` (the branch's
output when its gated inputs are zero). The class's ``forward`` still calls the submodules of
``f``, so each submodule whose whole computation lies inside the branch is swapped, in place, for
a :class:`RemovedBranch`: the one that returns the branch's output gives ``c`` broadcast to the
output's shape (in the output structure the original returned: Hugging Face attention's
``(out, weights)`` stays a 2-tuple), the ones before it (a pre-norm, BERT's self-attention before
its output projection) give zeros of the shape their caller expects. Nothing of the branch is
computed and its parameters are gone.

Replacing modules in place, never deleting entries of a ``ModuleList``, keeps layer indices: a
Hugging Face attention that is replaced still appends a placeholder (one head of width one) to
the KV cache of its layer, so the cache's length, which the model reads off the first layer when
no position is given, stays right. A stand-in for a strided convolution or pooling computes the
spatial size the original would give, so the model still runs at other input sizes.

Where a branch cannot be mapped onto submodules (its output is computed in the parent's own
``forward``, such as a layer scale, or a submodule changes a size that a stand-in cannot
compute), :func:`plan_stand_ins` raises :class:`KeepClassError` with the reason.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from gdp_graph.errors import GdpError
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.channels import Chan
from gdp_graph.graph.groups import Block


class KeepClassError(GdpError, RuntimeError):
    """The plan cannot be applied to the model's own class (the message says why); the caller
    keeps the GraphModule."""


Window = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], bool]
"""A sliding window over the spatial dims: kernel, stride, padding, dilation, ceil mode."""


def _tuple(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),)


def windows_of(module: nn.Module) -> Optional[tuple[Window, ...]]:
    """The windows a torch.nn convolution / pooling (or a ``Sequential`` of them and of layers
    that keep the spatial size) slides over its input, or None for any other module."""
    from torch.nn.modules import activation, batchnorm, conv, dropout, pooling
    if isinstance(module, conv._ConvNd) and not module.transposed:
        padding = module.padding
        if isinstance(padding, str):  # "valid": none; "same": the size is kept (stride 1)
            padding = (0,) if padding == "valid" else \
                tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
        return ((_tuple(module.kernel_size), _tuple(module.stride), _tuple(padding), _tuple(module.dilation), False),)
    if isinstance(module, (pooling._MaxPoolNd, pooling._AvgPoolNd)):
        stride = module.stride if module.stride is not None else module.kernel_size
        return ((_tuple(module.kernel_size), _tuple(stride), _tuple(module.padding),
                 _tuple(getattr(module, "dilation", 1)), bool(module.ceil_mode)),)
    if isinstance(module, nn.Sequential):
        steps = [windows_of(m) for m in module]
        return None if any(s is None for s in steps) else tuple(w for s in steps for w in s)
    if isinstance(module, (batchnorm._NormBase, nn.GroupNorm, nn.Identity, dropout._DropoutNd)) or \
            type(module).__module__ == activation.__name__:
        return ()
    return None


def slide(n: Any, window: Window, i: int) -> Any:
    """The size of spatial dim ``i`` (size ``n``) after ``window`` (a one-element setting
    applies to each dim); plain arithmetic, so torch.fx can trace it on a symbolic size."""
    k, s, p, d = (v[i] if len(v) > 1 else v[0] for v in window[:4])
    span = n + 2 * p - d * (k - 1) - 1
    if not window[4]:
        return span // s + 1
    size = -(-span // s) + 1
    return size - 1 if (size - 1) * s >= n + p else size  # ceil mode: the last window starts inside


class RemovedBranch(nn.Module):
    """Stands in for a submodule of a removed residual branch.

    Returns ``constant`` broadcast to the output shape (the submodule that produced the branch's
    output) or zeros (one before it). ``sizes`` gives the output's size per dim: an int, or None
    for the size of the input on that dim (batch and sequence follow the call), after the
    ``windows`` of the strided convolutions / poolings the original applied to its spatial dims.
    """

    def __init__(self, replaces: str, arg_names: tuple[str, ...], sizes: tuple[Optional[int], ...],
                 arity: Optional[int], main: int, constant: Optional[torch.Tensor] = None,
                 layer_idx: Optional[int] = None, windows: tuple[Window, ...] = ()):
        super().__init__()
        self.replaces = replaces
        self.arg_names = arg_names
        self.sizes = sizes
        self.arity = arity  #: None: a bare tensor; n: an n-tuple with the tensor at ``main``
        self.main = main
        self.layer_idx = layer_idx
        self.windows = windows
        self.register_buffer("constant", constant)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = {**dict(zip(self.arg_names, args)), **kwargs}
        x = bound[self.arg_names[0]] if self.arg_names and self.arg_names[0] in bound else args[0]
        shape = []
        for d, size in enumerate(self.sizes):
            if size is None:  # indexed, not iterated: torch.fx traces this (export --format source)
                size = x.size(d)
                for window in self.windows if d >= 2 else ():
                    size = slide(size, window, d - 2)
            shape.append(size)
        if self.constant is not None:
            # a real tensor, not an expanded view: the caller may add the shortcut in place
            out = self.constant.expand(shape).clone(memory_format=torch.contiguous_format)
        else:
            out = x.new_zeros(shape)
        if self.layer_idx is not None:
            self._keep_cache_length(bound.values(), x)
        if self.arity is None:
            return out
        result: list[Any] = [None] * self.arity
        result[self.main] = out
        return tuple(result)

    def _keep_cache_length(self, values: Any, x: torch.Tensor) -> None:
        """A KV cache passed to the attention this module replaces grows by the call's tokens
        (a placeholder of one head of width one), as the attention's own update would."""
        for value in values:
            cache = getattr(value, "self_attention_cache", value)  # an encoder-decoder cache
            if callable(getattr(cache, "update", None)) and callable(getattr(cache, "get_seq_length", None)):
                placeholder = x.new_zeros(x.shape[0], 1, x.shape[-2], 1)
                cache.update(placeholder, placeholder, self.layer_idx)
                return

    def extra_repr(self) -> str:
        what = "constant" if self.constant is not None else "zeros"
        sizes = ", ".join("*" if s is None else str(s) for s in self.sizes)
        return f"replaces {self.replaces}: {what} of shape ({sizes})"


@dataclass
class StandIns:
    """The stand-ins of every removed branch, by qualified module name, and the modules among
    those replaced (or inside them) that carry hooks, which the replacement drops."""

    modules: dict[str, RemovedBranch] = field(default_factory=dict)
    dropped_hooks: list[str] = field(default_factory=list)

    def apply(self, model: nn.Module) -> None:
        for name, module in self.modules.items():
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def _paths(node: fx.Node) -> list[str]:
    """The qualified names of the modules ``node`` was computed in, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [str(v[0]) for v in stack.values() if v and str(v[0])]


def _is_tensorish(value: Any) -> bool:
    return any(isinstance(v, torch.Tensor) for v in pytree.tree_leaves(value))


def _equal(a: Any, b: Any) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)


def _passes_input_through(node: fx.Node, module: str, values: dict[str, Any], members: set[str]) -> bool:
    """``node`` hands an input from outside ``module`` on, unchanged, to the branch: a norm's
    ``x.to(x.dtype)``, whose alias torch.export also gives to later code as the residual. (The
    same module called again on another input, a shared dropout, is no such alias.)"""
    return any(u.name in members for u in node.users) and any(
        module not in _paths(a) and _equal(values.get(node.name), values.get(a.name)) for a in node.all_input_nodes)


def _where(node: fx.Node, add: fx.Node) -> str:
    paths = _paths(node)
    if not paths:
        return "in the model's own forward"
    if paths[-1] in _paths(add):
        return f"in {paths[-1]}'s own forward"
    return f"by {paths[-1]}, which also runs outside the branch"


def branch_modules(analysis: Analysis, block: Block) -> tuple[list[str], str]:
    """The outermost submodules whose computation lies wholly inside the branch of ``block``
    (no tensor they compute is used outside them unless it is part of the branch), and the one
    among them that returns the branch's output (possibly through ops that hand it on unchanged,
    such as a dropout in eval mode shared with the other half of the layer)."""
    gm, values = analysis.traced.gm, analysis.traced.values
    members = set(block.nodes)
    by_module: dict[str, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op not in ("placeholder", "output", "get_attr"):
            for p in _paths(n):
                by_module.setdefault(p, []).append(n)
    candidates = {p for n in gm.graph.nodes if n.name in members for p in _paths(n)}
    inside = set()
    for p in candidates:
        leaks = [n for n in by_module[p] if n.name not in members and _is_tensorish(values.get(n.name))
                 and any(p not in _paths(u) for u in n.users) and not _passes_input_through(n, p, values, members)]
        if not leaks:
            inside.add(p)
    outermost = sorted(p for p in inside if not any(p.startswith(q + ".") for q in inside))
    node = analysis.traced.node(block.nodes[-1])
    while not any(p in outermost for p in _paths(node)):
        fed = [a for a in node.all_input_nodes if a.name in members and isinstance(values.get(a.name), torch.Tensor)]
        if len(fed) != 1 or not _equal(values.get(node.name), values.get(fed[0].name)):
            raise KeepClassError(f"block {block.id} ({block.name}): its output (node '{node.name}') is computed "
                                 f"{_where(node, analysis.traced.node(block.add_node))}, not returned by a "
                                 f"submodule of the branch")
        node = fed[0]
    return outermost, next(p for p in _paths(node) if p in outermost)


def _first_param_names(module: nn.Module) -> tuple[str, ...]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


@dataclass
class _Call:
    input: Any
    output: Any


def _copy(value: Any) -> Any:
    """``value`` with every tensor in it (nested too) copied."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone(), value)


def _probe(model: nn.Module, analysis: Analysis, names: list[str]) -> dict[str, list[_Call]]:
    """Every call of the named modules on the example inputs: its first input and its output."""
    calls: dict[str, list[_Call]] = {name: [] for name in names}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        arg_names = _first_param_names(module)

        def record(m: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = name,
                   arg_names: tuple[str, ...] = arg_names) -> None:
            first = args[0] if args else kwargs.get(arg_names[0]) if arg_names else None
            # copies: the caller may change the output in place (ResNet's ``out += identity``)
            calls[name].append(_Call(_copy(first), _copy(output)))

        handles.append(module.register_forward_hook(record, with_kwargs=True))
    try:
        with torch.no_grad():
            analysis.traced.inputs.call(model.eval())
    finally:
        for h in handles:
            h.remove()
    return calls


def _structure(output: Any, name: str) -> tuple[Optional[int], list[torch.Tensor]]:
    """(None for a bare tensor, else the tuple's length) and the output's tensors by position."""
    if isinstance(output, torch.Tensor):
        return None, [output]
    if isinstance(output, tuple) and all(v is None or isinstance(v, torch.Tensor) for v in output):
        return len(output), list(output)
    raise KeepClassError(f"{name} returns a {type(output).__name__}, which a stand-in cannot reproduce")


def _returning(calls: list[_Call], expected: torch.Tensor, name: str) -> Optional[tuple[_Call, int]]:
    """The call and output position that gave the branch's output: a tensor of its shape, the
    closest to its recorded value where several qualify (the recorded value may have been
    changed since by an in-place add of the shortcut, as torch.export records ResNet's)."""
    found = [(c, i, t) for c in calls for i, t in enumerate(_structure(c.output, name)[1])
             if isinstance(t, torch.Tensor) and t.shape == expected.shape]
    if not found:
        return None
    call, i, _ = min(found, key=lambda f: float((f[2].double() - expected.double()).abs().max())
                     if f[2].numel() else 0.0)
    return call, i


def _sizes(name: str, block: Block, x: Any, y: torch.Tensor, channel_dims: set[int],
           constant: Optional[torch.Tensor], module: nn.Module) -> tuple[tuple[Optional[int], ...], tuple[Window, ...]]:
    """Per dim of the output: None where it follows the input (batch, sequence, space), the
    constant's size on the branch's channel dims; and the windows of a module that changes a
    spatial size (a strided convolution)."""
    if not isinstance(x, torch.Tensor) or x.dim() != y.dim():
        raise KeepClassError(f"block {block.id} ({block.name}): {name} maps a "
                             f"{type(x).__name__ if not isinstance(x, torch.Tensor) else f'{x.dim()}-d tensor'} "
                             f"to a {y.dim()}-d tensor; a stand-in cannot follow the sizes")
    changed = [d for d in range(y.dim()) if d not in channel_dims and x.shape[d] != y.shape[d]]
    windows: tuple[Window, ...] = ()
    if changed:
        windows = windows_of(module) or ()
        follows = list(x.shape)
        for window in windows:
            follows[2:] = [slide(n, window, i) for i, n in enumerate(follows[2:])]
        if any(follows[d] != y.shape[d] for d in changed):
            d = changed[0]
            raise KeepClassError(f"block {block.id} ({block.name}): {name} changes dim {d} from {x.shape[d]} to "
                                 f"{y.shape[d]} and is no torch.nn convolution or pooling whose output size a "
                                 f"stand-in can compute")
    sizes = tuple((int(constant.shape[d]) if constant is not None else int(y.shape[d])) if d in channel_dims else None
                  for d in range(y.dim()))
    return sizes, windows


def plan_stand_ins(model: nn.Module, analysis: Analysis, removed: list[int],
                   constants: dict[int, torch.Tensor]) -> StandIns:
    """The :class:`RemovedBranch` of each submodule of the ``removed`` blocks' branches, for
    ``model`` (a copy of the traced class, still at its original sizes: it is run once on the
    example inputs to see what each submodule takes and returns). ``constants[block]`` is the
    branch's constant term, shaped like its output with size 1 on non-channel dims.

    Raises:
        KeepClassError: a branch cannot be mapped onto submodules (the message says why).
    """
    per_block = {bid: branch_modules(analysis, analysis.blocks[bid]) for bid in removed}
    names = [n for modules, _ in per_block.values() for n in modules]
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise KeepClassError(f"the traced module path '{name}' is not a submodule of the class") from None
    calls = _probe(model, analysis, names)
    out = StandIns()
    for bid, (modules, owner) in per_block.items():
        block = analysis.blocks[bid]
        branch = analysis.traced.node(block.nodes[-1])
        expected = analysis.traced.values[branch.name]
        chan = branch.meta.get("channels")
        channel_dims = chan.dims() if isinstance(chan, Chan) else set()
        for name in modules:
            original = model.get_submodule(name)
            if not calls[name]:
                raise KeepClassError(f"block {block.id} ({block.name}): {name} is not called by the class's forward")
            if name == owner:
                found = _returning(calls[name], expected, name)
                if found is None:
                    raise KeepClassError(f"block {block.id} ({block.name}): {name} does not return the branch's output")
                (call, main), constant = found, constants[bid]
            else:
                call, constant = calls[name][-1], None
                present = [i for i, t in enumerate(_structure(call.output, name)[1]) if t is not None]
                if not present:
                    raise KeepClassError(f"block {block.id} ({block.name}): {name} returns no tensor")
                main = present[0]
            arity, tensors = _structure(call.output, name)
            sizes, windows = _sizes(name, block, call.input, tensors[main], channel_dims, constant, original)
            layer_idx = getattr(original, "layer_idx", None)
            out.modules[name] = RemovedBranch(type(original).__name__, _first_param_names(original), sizes, arity,
                                              main, None if constant is None else constant.detach().clone(),
                                              layer_idx if isinstance(layer_idx, int) else None, windows)
            out.dropped_hooks += [f"{name}.{sub}" if sub else name for sub, m in original.named_modules()
                                  if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]
    return out


__all__ = ["KeepClassError", "RemovedBranch", "StandIns", "branch_modules", "plan_stand_ins"]
