"""Stage 5: apply a pruning plan: the pruned ``fx.GraphModule``, and the model to hand back.

The plan is compiled to its slice map (:mod:`gdp_graph.prune.slices`). :func:`rewrite_graph` is
one ``torch.fx.Transformer`` pass over the analysed graph that emits the pruned one: a module call
gets the module resized as the map says, a ``get_attr`` tensor is sliced, and a call's size
arguments are patched by its rule's ``rewrite_args``. Removed blocks become ``shortcut + c``
with the branch's constant output ``c``. Shape queries of dims whose channel count changed are
pinned to their original values, so arithmetic such as ``C // num_heads`` keeps its meaning
while view sizes take the new counts.

:func:`apply_plan` composes the steps a user wants: the map, the graph, its verification against
the gated reference, and a copy of the model's own class with the same tensors where that
verifies too (:mod:`gdp_graph.prune.keep_class`); it returns them as one :class:`Rewritten`.
:func:`rewrite` is its ``.model``.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph import rules
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.channels import Chan
from gdp_graph.graph.model_copy import deepcopy_model
from gdp_graph.prune.keep_class import (  # noqa: F401 - the warning was defined here
    BLOCK_CONSTANT_META, SITE_SCALE_META, KeepClassWarning, class_or_graph)
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.prune.resize_context import ResizeContext
from gdp_graph.prune.slices import RewriteError, SliceMap, slice_map
from gdp_graph.prune.verify import VerifyResult, reference_output, verify


class VerifyWarning(UserWarning):
    """``rewrite(check=True)`` found that the pruned model differs from the gated reference."""


SiteScales = dict[tuple[str, int], tuple[int, torch.Tensor]]


@dataclass
class Rewritten:
    """What :func:`apply_plan` returns.

    Attributes:
        model: the model to use: the copy of the model's own class where it was kept, else
            ``graph``.
        graph: the pruned GraphModule.
        slice_map: the plan's slice map, which both were made from.
        verify: ``model`` against the gated reference on the example inputs (None: not
            checked: ``check=False`` or an inexact plan).
        kept_class_reason: why ``model`` is the GraphModule ("" when it is the class).
        dropped_hooks: hooks of the user's modules that the returned model lacks.
    """

    model: nn.Module
    graph: fx.GraphModule
    slice_map: SliceMap
    verify: Optional[VerifyResult] = None
    kept_class_reason: str = ""
    dropped_hooks: list[str] = field(default_factory=list)


def rewrite(analysis: Analysis, plan: PruningPlan, *, check: bool = True, tolerance: float = 1e-4,
            keep_class: Optional[bool] = None) -> nn.Module:
    """The pruned model: ``apply_plan(...).model`` (see :func:`apply_plan`; the analysed model is
    left untouched). A difference from the gated reference is a :class:`VerifyWarning`."""
    return apply_plan(analysis, plan, check=check, tolerance=tolerance, keep_class=keep_class).model


def apply_plan(analysis: Analysis, plan: PruningPlan, *, check: bool = True, tolerance: float = 1e-4,
               keep_class: Optional[bool] = None) -> Rewritten:
    """Apply ``plan``: the slice map, the pruned GraphModule, their verification, and the model
    of the user's own class where it verifies.

    Args:
        check: compare the GraphModule with the gated reference on the example inputs (within
            ``tolerance``). A difference is reported, not raised: ``verify.ok`` is False and a
            :class:`VerifyWarning` names it, so callers (``gdp-graph check``, exit 1) decide.
            Skipped for inexact plans (the difference is then the point; call ``verify`` to see
            it).
        keep_class: None (the default): ``model`` is a copy of the model's own class with the
            plan applied (a Hugging Face model keeps its config, ``generate`` and
            ``save_pretrained``; submodules of removed residual branches become stand-ins
            returning the branch's constant) when the GraphModule verified and the class's real
            forward verifies too; otherwise the GraphModule, with ``kept_class_reason`` saying why
            (and a :class:`KeepClassWarning` when the class was tried). Not tried with
            ``check=False`` or an inexact plan, which nothing verifies here. True: try it even
            when the GraphModule did not verify. False: always the GraphModule.

    Raises:
        PlanError: the plan does not fit the analysis.
        RewriteError: a node could not be rewritten (named).
    """
    smap = slice_map(analysis, plan)  # validates the plan
    graph = rewrite_graph(analysis, plan, smap)
    checked, expected = None, None
    if check and not plan.allow_inexact:
        expected = reference_output(analysis, plan)
        checked = verify(analysis, plan, graph, tolerance=tolerance, expected=expected)
        if not checked.ok:
            warnings.warn(f"the pruned model differs from the gated reference: {checked}", VerifyWarning, stacklevel=3)
    kept = class_or_graph(analysis, plan, graph, smap, checked, wanted=keep_class, tolerance=tolerance,
                          expected=expected, check=check)
    if kept.model is None:
        return Rewritten(graph, graph, smap, checked, kept.reason, kept.dropped_hooks)
    return Rewritten(kept.model, graph, smap, kept.verify, "", kept.dropped_hooks)


def rewrite_graph(analysis: Analysis, plan: PruningPlan, smap: Optional[SliceMap] = None, *,
                  weights: Optional[nn.Module] = None, site_scales: Optional[SiteScales] = None,
                  copy_weights: bool = True) -> fx.GraphModule:
    """The pruned GraphModule (nothing verified).

    Args:
        smap: the plan's slice map (made here when not given, with ``weights``).
        weights: a module with the traced graph's structure whose parameters to use instead of
            the traced ones (e.g. with gates absorbed); defaults to the traced module.
        site_scales: ``{(node, arg): (dim, scale)}`` multipliers to keep in the pruned graph
            before a node's input (gates that no weight could absorb); scales are given over
            the original positions and sliced to the kept ones.
        copy_weights: False hands ``weights`` over (a private copy, e.g. finalize's absorbed
            one): it becomes the pruned model, edited in place, instead of being copied.
    """
    if not copy_weights and weights is None:
        raise RewriteError("copy_weights=False needs weights to hand over (the traced module is shared)")
    smap = smap if smap is not None else slice_map(analysis, plan, weights=weights)
    gm = analysis.traced.gm
    source = weights if weights is not None else gm
    # a handed-over ``weights`` becomes the pruned model in place (copying its module tree cost
    # a third of finalize on an EfficientNet): the pass reads ``source``'s modules and attributes
    # before it edits ``root``
    root = deepcopy_model(source) if copy_weights else source
    walk = _PlanPass(analysis, plan, smap, source, root, site_scales or {})
    pruned = fx.GraphModule(root, walk.emit(), f"Pruned{type(gm).__name__}")
    for spec in ("_in_spec", "_out_spec"):  # read by the generated code of an exported graph
        if hasattr(gm, spec):
            setattr(pruned, spec, getattr(gm, spec))
    pruned.graph.eliminate_dead_code(is_impure_node=_has_side_effect)
    read = {str(n.target) for n in pruned.graph.nodes if n.op == "get_attr"}
    for name in [n for n in walk.added if n not in read]:
        del pruned._buffers[name]  # a removed block's constant whose sum nothing reads
    pruned.graph.lint()
    pruned.recompile()
    pruned.delete_all_unused_submodules()
    return pruned.eval()


class _PlanPass(fx.Transformer):
    """One walk over the analysed graph emitting the pruned one; every fact is keyed by Node."""

    def __init__(self, analysis: Analysis, plan: PruningPlan, smap: SliceMap, source: nn.Module, root: nn.Module,
                 site_scales: SiteScales):
        super().__init__(analysis.traced.gm)
        self.extra_traceback = False  # the RewriteError names the node itself
        self.module = root  # what the new graph's get_attr / call_module targets are read from
        self.analysis, self.smap, self.root = analysis, smap, root
        self.keep = plan.element_keep(analysis)
        self.values = analysis.traced.values
        nodes = {n.name: n for n in self.graph.nodes}
        self.modules = dict(source.named_modules())
        self.attributes = {n.target: _read_attr(source, str(n.target)) for n in nodes.values() if n.op == "get_attr"}
        blocks = [analysis.blocks[b] for b in sorted(plan.removed_blocks)]
        self.removed = {nodes[b.add_node]: b for b in blocks}
        self.dead = {nodes[n] for b in blocks for n in b.nodes}
        self.scales: dict[fx.Node, list[tuple[int, int, torch.Tensor]]] = {}
        for (name, arg), (dim, scale) in site_scales.items():
            self.scales.setdefault(nodes[name], []).append((arg, dim, scale))
        self.shape_source: dict[fx.Node, fx.Node] = {}
        self.added: list[str] = []  # buffers of constants and scales this pass registers

    def emit(self) -> fx.Graph:
        """The pruned graph (``transform()`` without the GraphModule it would build)."""
        result = self.run(enable_io_processing=False)
        output = self.new_graph.output(fx.node.map_aggregate(result, lambda a: a.node if isinstance(a, fx.Proxy)
                                                             else a))
        old = next(n for n in reversed(self.graph.nodes) if n.op == "output")
        output.meta = {k: v for k, v in old.meta.items() if k != "channels"}
        return self.new_graph

    def run_node(self, n: fx.Node) -> Any:
        if n in self.dead:
            return None
        try:
            out = self._emit(n)
        except Exception as exc:  # noqa: BLE001 - re-raised with the node named
            raise RewriteError(f"cannot rewrite node '{n.name}' ({n.format_node()}): "
                               f"{type(exc).__name__}: {exc}") from exc
        if _is_shape_query(n):
            self.shape_source[n] = n.args[0]
        return out

    def _emit(self, n: fx.Node) -> Any:
        if n in self.removed:
            return self._removed_add(n, self.removed[n])
        pinned = self._pinned_query(n)
        if pinned is not None:
            return pinned
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.op == "output":
            return args[0]
        args = self._scaled(n, args)
        target = n.target
        if n.op == "get_attr" and str(n.target) in self.smap.entries:
            _set_attr(self.root, str(n.target), self.smap.apply_to_tensor(str(n.target), self.attributes[n.target]))
        elif n.op == "call_module":
            module = self.modules[n.target]
            resized = self.smap.apply_to_module(str(n.target), module)
            if resized is not module:
                _set_submodule(self.root, str(n.target), resized)
        elif n.op in ("call_function", "call_method"):
            args, kwargs, target = self._patched(n, args, kwargs)
        op = "call_function" if target is not n.target else n.op
        proxy = self.tracer.create_proxy(op, target, tuple(args), dict(kwargs), name=n.name)
        proxy.node.meta = {k: v for k, v in n.meta.items() if k != "channels"}
        return proxy

    def _patched(self, n: fx.Node, args: tuple, kwargs: dict) -> tuple[tuple, dict, Any]:
        """A call's arguments as its rule's ``rewrite_args`` patches them, and its target."""
        rule = rules.lookup(n.target)
        if rule is None:
            return args, kwargs, n.target
        rctx = ResizeContext(n, args, kwargs, self.analysis, self.keep)
        patched = rule.rewrite_args(rctx)
        if patched is not None:
            args, kwargs = patched
        return tuple(args), kwargs, rctx.new_target or n.target

    def _removed_add(self, n: fx.Node, block: Any) -> Any:
        """``shortcut + constant`` for a removed block's add (the shortcut alone when zero)."""
        shortcut = self.env[n.args[1 - block.arg]]
        constant = self.smap.removed_branches[block.id].constant
        if constant is None:
            return shortcut
        name = self._buffer(f"_gdp_constant_block{block.id}", constant.clone())
        const = self.tracer.create_proxy("get_attr", name, (), {})
        const.node.meta[BLOCK_CONSTANT_META] = block.id
        return self.tracer.create_proxy("call_function", torch.add, (shortcut, const), {})

    def _scaled(self, n: fx.Node, args: tuple) -> tuple:
        """``args`` with the kept gate scales of ``n``'s inputs multiplied in."""
        for arg, dim, scale in self.scales.get(n, ()):
            args = list(args)
            kept = ResizeContext(n, tuple(args), {}, self.analysis, self.keep).in_keep(arg, dim)
            ndim = self.values[n.args[arg].name].dim()
            shape = [1] * ndim
            shape[dim % ndim] = int(kept.sum())
            name = self._buffer(f"_gdp_scale_{len(self.added)}", scale[kept].reshape(shape).clone())
            factor = self.tracer.create_proxy("get_attr", name, (), {})
            factor.node.meta[SITE_SCALE_META] = True
            args[arg] = self.tracer.create_proxy("call_function", torch.mul, (args[arg], factor), {})
        return tuple(args)

    def _buffer(self, name: str, value: torch.Tensor) -> str:
        self.root.register_buffer(name, value)
        self.added.append(name)
        return name

    def _changed(self, src: fx.Node, dim: int) -> bool:
        chan = src.meta.get("channels")
        value = self.values[src.name]
        if not isinstance(chan, Chan) or not isinstance(value, torch.Tensor):
            return False
        track = chan.on(dim % value.dim())
        return track is not None and not bool(self.keep[track.labels].all())

    def _pinned_query(self, n: fx.Node) -> Any:
        """The original integer for a size query of a dim whose channel count changed."""
        if n.op == "call_method" and n.target == "size":
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            if dim is not None and isinstance(dim, int) and self._changed(n.args[0], dim):
                return self.values[n.name]
        if n.op == "call_function" and n.target is operator.getitem \
                and isinstance(n.args[0], fx.Node) and n.args[0] in self.shape_source:
            index = n.args[1]
            source = self.shape_source[n.args[0]]
            dims = [index] if isinstance(index, int) else \
                list(range(len(self.values[n.args[0].name])))[index] if isinstance(index, slice) else []
            if any(self._changed(source, d) for d in dims):
                return self.values[n.name]  # e.g. `c, h, w = x.shape[1:]`: c keeps its original value
        return None


def _set_submodule(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent_name, _, leaf = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def _set_attr(root: nn.Module, qualname: str, value: torch.Tensor) -> None:
    parent_name, _, leaf = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, leaf)
    if isinstance(old, nn.Parameter):
        value = nn.Parameter(value, requires_grad=old.requires_grad)
        setattr(parent, leaf, value)
    elif leaf in parent._buffers:
        parent._buffers[leaf] = value
    else:
        setattr(parent, leaf, value)


def _is_shape_query(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target == "size") or (
        node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] == "shape")


def _read_attr(module: nn.Module, target: str) -> Any:
    try:
        return operator.attrgetter(target)(module)
    except AttributeError:
        return None


def _has_side_effect(node: fx.Node) -> bool:
    """fx keeps impure functions, but not in-place methods: ``mask.masked_fill_(...)`` whose
    result is unused changes ``mask`` (GPT-2's causal mask) and must stay."""
    if node.is_impure():
        return True
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return node.op in ("call_method", "call_function") and isinstance(name, str) \
        and name.endswith("_") and not name.endswith("__")
