"""Stage 5: apply a pruning plan and emit a new, smaller ``fx.GraphModule``.

The plan is compiled to its slice map (:mod:`gdp_graph.prune.slices`); one walk over the traced
graph then copies each live node: a module call gets the module resized as the map says, a
``get_attr`` tensor is sliced, and a call's size arguments are patched by its rule's
``rewrite_args``. Removed blocks become ``shortcut + c`` with the branch's constant output ``c``.
Shape queries of dims whose channel count changed are pinned to their original values, so
arithmetic such as ``C // num_heads`` keeps its meaning while view sizes take the new counts.

The GraphModule's tensors are then put into a copy of the model's own class where that verifies
(:mod:`gdp_graph.prune.keep_class`), which is what ``rewrite`` returns by default.
"""

from __future__ import annotations

import copy
import operator
import warnings
from typing import Any, Optional

import torch
import torch.fx as fx
from torch import nn

from gdp_graph.graph import rules
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.channels import Chan
from gdp_graph.prune.keep_class import (  # noqa: F401 - the warning was defined here
    BLOCK_CONSTANT_META, SITE_SCALE_META, KeepClassWarning, class_or_graph)
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.prune.resize_context import ResizeContext
from gdp_graph.prune.slices import RewriteError, slice_map


class VerifyWarning(UserWarning):
    """``rewrite(check=True)`` found that the pruned model differs from the gated reference."""


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


SiteScales = dict[tuple[str, int], tuple[int, torch.Tensor]]


def rewrite(analysis: Analysis, plan: PruningPlan, *, weights: Optional[nn.Module] = None,
            site_scales: Optional[SiteScales] = None, check: bool = True,
            tolerance: float = 1e-4, keep_class: Optional[bool] = None, copy_weights: bool = True) -> nn.Module:
    """Apply ``plan`` and return the pruned module (the analysed model is left untouched).

    Args:
        weights: a module with the traced graph's structure whose parameters to use instead of
            the traced ones (e.g. with gates absorbed); defaults to the traced module.
        site_scales: ``{(node, arg): (dim, scale)}`` multipliers to keep in the pruned graph
            before a node's input (gates that no weight could absorb); scales are given over
            the original positions and sliced to the kept ones.
        check: compare the result with the gated reference on the example inputs (``verify``,
            within ``tolerance``) and keep the :class:`~gdp_graph.prune.verify.VerifyResult` as
            ``pruned.gdp_verify``. A difference is reported, not raised: ``gdp_verify.ok`` is
            False and a :class:`VerifyWarning` names it, so callers (``gdp-graph check``, exit 1)
            decide. Skipped for inexact plans (the difference is then the point; call
            ``verify`` to see it) and with ``weights``/``site_scales`` (finalize checks against
            the gated model itself); ``pruned.gdp_verify`` is then None.
        keep_class: None (the default): return a copy of the model's own class with the plan
            applied (:mod:`gdp_graph.prune.keep_class`: a Hugging Face model keeps its config,
            ``generate`` and ``save_pretrained``; submodules of removed residual branches become
            stand-ins returning the branch's constant) when the GraphModule verified and the
            class's real forward verifies too; otherwise the GraphModule, with
            ``pruned.gdp_kept_class_reason`` saying why (and a :class:`KeepClassWarning` when the
            class was tried). Not tried with ``check=False``, ``weights``/``site_scales`` or an
            inexact plan, which nothing verifies here. True: try it even when the GraphModule
            did not verify. False: always the GraphModule.
        copy_weights: False hands ``weights`` over (a private copy, e.g. finalize's absorbed
            one): it becomes the pruned model, edited in place, instead of being copied.
    """
    if not copy_weights and weights is None:
        raise RewriteError("copy_weights=False needs weights to hand over (the traced module is shared)")
    smap = slice_map(analysis, plan, weights=weights)  # validates the plan
    keep = plan.element_keep(analysis)
    gm = analysis.traced.gm
    source = weights if weights is not None else gm
    values = dict(analysis.traced.values)
    # a handed-over ``weights`` becomes the pruned model in place (copying its module tree cost
    # a third of finalize on an EfficientNet): everything the loop reads from ``source`` -
    # modules, attributes - is taken before it edits ``root``
    root = copy.deepcopy(source) if copy_weights else source
    modules = dict(source.named_modules())
    attributes = {n.target: _read_attr(source, str(n.target)) for n in gm.graph.nodes if n.op == "get_attr"}
    site_scales = site_scales or {}
    removed = {analysis.blocks[b].add_node: analysis.blocks[b] for b in plan.removed_blocks}
    dead = {n for b in removed.values() for n in b.nodes}
    graph = fx.Graph()
    graph._codegen = copy.copy(gm.graph._codegen)  # torch.export graphs: the output structure
    env: dict[str, Any] = {}
    shape_source: dict[str, fx.Node] = {}
    const_count = 0
    added: list[str] = []  # buffers of constants and scales this rewrite registers

    def load(a):
        return fx.node.map_arg(a, lambda n: env[n.name])

    for node in gm.graph.nodes:
        if node.name in dead:
            continue
        try:
            if node.name in removed:
                block = removed[node.name]
                shortcut = load(node.args[1 - block.arg])
                constant = smap.removed_branches[block.id].constant
                if constant is None:
                    env[node.name] = shortcut
                    continue
                name = f"_gdp_constant_block{block.id}"
                root.register_buffer(name, constant.clone())
                added.append(name)
                const = graph.get_attr(name)
                const.meta[BLOCK_CONSTANT_META] = block.id
                env[node.name] = graph.call_function(torch.add, (shortcut, const))
                continue
            args, kwargs = load(node.args), load(node.kwargs)
            pinned = _pinned_query(node, analysis, keep, values, shape_source)
            if pinned is not None:
                env[node.name] = pinned
                continue
            if node.op == "get_attr" and str(node.target) in smap.entries:
                _set_attr(root, node.target, smap.apply_to_tensor(str(node.target), attributes[node.target]))
            for (site_node, arg), (dim, scale) in site_scales.items():
                if site_node == node.name:
                    args = list(args)
                    kept = ResizeContext(node, tuple(args), kwargs, analysis, keep).in_keep(arg, dim)
                    ndim = values[node.args[arg].name].dim()
                    shape = [1] * ndim
                    shape[dim % ndim] = int(kept.sum())
                    name = f"_gdp_scale_{const_count}"
                    const_count += 1
                    root.register_buffer(name, scale[kept].reshape(shape).clone())
                    added.append(name)
                    scale_node = graph.get_attr(name)
                    scale_node.meta[SITE_SCALE_META] = True
                    args[arg] = graph.call_function(torch.mul, (args[arg], scale_node))
                    args = tuple(args)
            new_target = node.target
            if node.op == "call_module":
                module = modules[node.target]
                new_module = smap.apply_to_module(node.target, module)
                if new_module is not module:
                    _set_submodule(root, node.target, new_module)
            elif node.op in ("call_function", "call_method"):
                rule = rules.lookup(node.target)
                if rule is not None:
                    rctx = ResizeContext(node, args, kwargs, analysis, keep)
                    patched = rule.rewrite_args(rctx)
                    if patched is not None:
                        args, kwargs = patched
                    new_target = rctx.new_target or node.target
            new_node = graph.create_node("call_function" if new_target is not node.target else node.op, new_target, tuple(args) if isinstance(args, (list, tuple)) else args,
                                         dict(kwargs), name=node.name)
            new_node.meta = {k: v for k, v in node.meta.items() if k != "channels"}
            env[node.name] = new_node
            if _is_shape_query(node):
                shape_source[node.name] = node.args[0]
        except Exception as exc:  # noqa: BLE001 - re-raised with the node named
            raise RewriteError(f"cannot rewrite node '{node.name}' ({node.format_node()}): {type(exc).__name__}: {exc}") from exc
    pruned = fx.GraphModule(root, graph, f"Pruned{type(gm).__name__}")
    for spec in ("_in_spec", "_out_spec"):  # read by the generated code of an exported graph
        if hasattr(gm, spec):
            setattr(pruned, spec, getattr(gm, spec))
    pruned.graph.eliminate_dead_code(is_impure_node=_has_side_effect)
    read = {str(n.target) for n in pruned.graph.nodes if n.op == "get_attr"}
    for name in [n for n in added if n not in read]:
        del pruned._buffers[name]  # a removed block's constant whose sum nothing reads
    pruned.graph.lint()
    pruned.recompile()
    pruned.delete_all_unused_submodules()
    pruned.eval()
    pruned.gdp_verify = None
    expected = None
    if check and weights is None and not site_scales and not plan.allow_inexact:
        # verify builds on the analysis, not on the rewriter
        from gdp_graph.prune.verify import reference_output, verify
        expected = reference_output(analysis, plan)
        pruned.gdp_verify = verify(analysis, plan, pruned, tolerance=tolerance, expected=expected)
        if not pruned.gdp_verify.ok:
            warnings.warn(f"the pruned model differs from the gated reference: {pruned.gdp_verify}",
                          VerifyWarning, stacklevel=2)
    return class_or_graph(analysis, plan, pruned, smap, wanted=keep_class, tolerance=tolerance, expected=expected,
                          own_weights=weights is not None or bool(site_scales), check=check)


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


def _pinned_query(node: fx.Node, analysis: Analysis, keep: torch.Tensor, values: dict, shape_source: dict) -> Any:
    """The original integer for a size query of a dim whose channel count changed."""
    def changed(src: fx.Node, dim: int) -> bool:
        chan = src.meta.get("channels")
        value = values[src.name]
        if not isinstance(chan, Chan) or not isinstance(value, torch.Tensor):
            return False
        dim %= value.dim()
        track = chan.on(dim)
        return track is not None and not bool(keep[track.labels].all())

    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dim is not None and isinstance(dim, int) and changed(node.args[0], dim):
            return values[node.name]
    if node.op == "call_function" and node.target.__name__ == "getitem" and isinstance(node.args[0], fx.Node) \
            and node.args[0].name in shape_source:
        index = node.args[1]
        source = shape_source[node.args[0].name]
        dims = [index] if isinstance(index, int) else \
            list(range(len(values[node.args[0].name])))[index] if isinstance(index, slice) else []
        if any(changed(source, d) for d in dims):
            return values[node.name]  # e.g. `c, h, w = x.shape[1:]`: c keeps its original value
    return None
