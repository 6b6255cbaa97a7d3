"""The second front end: capture a model with ``torch.export`` (non-strict) when torch.fx
symbolic tracing cannot.

``torch.export`` runs the real forward under fake tensors, so Python control flow, ``*args``
plumbing and library code that fx refuses (Hugging Face transformers 5 removed its own fx
tracer) are captured; the result is a graph of ATen ops, analysed with the ATen rules of the same
registry (:mod:`gdp_graph.graph.rules.aten`). Parameters are read by ``get_attr`` nodes under
their original qualified names (``model.layers.0.self_attn.q_proj.weight``), so policies match
the same module names as with fx; every op node also carries ``nn_module_stack``, from which
:func:`module_of` names the module it was called in.

The batch size is captured symbolic where the model allows it (``Dim.AUTO``), and on request
(``dynamic="tokens"``) the sequence length of integer inputs (token ids, masks) too; other sizes
(the image size) are those of the example inputs. The model's output structure
(a ``ModelOutput``, a dict) is kept.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from typing import Any, Iterator, Optional

import torch
import torch.fx as fx
from torch.fx._lazy_graph_module import _LazyGraphModule, _use_lazy_graph_module
import torch.utils._pytree as pytree
from torch import nn
from torch.fx._pytree import tree_flatten_spec

from gdp_graph.graph.inputs import BoundInputs
from gdp_graph.graph.model_copy import attributes_restored

CONSTANT_BUFFER = "gdp_constant_buffer"  #: node.meta key: a non-persistent buffer (not channels)


#: which input dims an export keeps symbolic: "batch" (dim 0 of every tensor input) or "tokens"
#: (also every dim of integer inputs: token ids and masks, so the sequence length)
DYNAMIC = ("batch", "tokens")


def export_graph(work: nn.Module, bound: BoundInputs, dynamic: str = "batch") -> tuple[fx.GraphModule, tuple[Any, ...]]:
    """Capture ``work`` (already a private eval-mode copy) on the example inputs, with the dims
    ``dynamic`` names symbolic where the model allows (see :data:`DYNAMIC`; "tokens" costs a
    decoder's export two to three times as long).

    Returns a GraphModule that takes the flattened inputs positionally (one per placeholder) and
    returns the model's own output structure, and those flattened inputs.
    """
    # graph modules that generate their code when first called: the export rebuilds its graph
    # module several times, and generating the code each time was a fifth of a decoder's export
    with _quiet_torch_logs(), _use_lazy_graph_module(True), attributes_restored(work):
        try:  # the batch size symbolic where the model allows, so the graph is not tied to it
            exported = torch.export.export(work, tuple(bound.args), dict(bound.kwargs), strict=False,
                                           dynamic_shapes=_dynamic_dims(work, bound, dynamic)).module()
        except Exception:  # noqa: BLE001 - some models only export at the example's sizes
            exported = torch.export.export(work, tuple(bound.args), dict(bound.kwargs), strict=False).module()
    # the graph is edited before it becomes a plain GraphModule (the exported one refuses
    # .eval()/.train(), which every stage calls): building one generates its code, once
    graph = exported.graph
    info = getattr(graph._codegen, "pytree_info", None)
    flat: tuple[Any, ...] = tuple(bound.args)
    positional_spec = None
    if info is not None:
        flat = tuple(tree_flatten_spec((tuple(bound.args), dict(bound.kwargs)), info.in_spec))
        # positional inputs, one per placeholder: the rest of the pipeline calls gm(*inputs)
        positional_spec = pytree.tree_structure((flat, {}))
        graph._codegen.pytree_info = info._replace(in_spec=positional_spec)
        _drop_guard_calls(graph)
    gm = _LazyGraphModule(exported, graph, type(work).__name__)
    for spec in ("_in_spec", "_out_spec"):
        if hasattr(exported, spec):
            setattr(gm, spec, getattr(exported, spec))
    if positional_spec is not None:
        gm._in_spec = positional_spec
        mark_constant_buffers(gm, work)
    return gm, flat


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch.export logs warnings and whole graphs when it gives up or specializes a size; a
    failed attempt is reported once, in the analysis's own words (``front_end_reason``). Nor
    does it record a Python stack trace per node, which nothing here reads (a sixth of the
    export of a 30-layer decoder)."""
    import torch.fx.config as fx_config

    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("torch")]
    levels = [lg.level for lg in loggers]
    stack_traces = fx_config.do_not_emit_stack_traces
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    fx_config.do_not_emit_stack_traces = True
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the graph dump of a data-dependent guard
            yield
    finally:
        fx_config.do_not_emit_stack_traces = stack_traces
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _dynamic_dims(work: nn.Module, bound: BoundInputs, dynamic: str) -> dict[str, Any]:
    """``Dim.AUTO`` on dim 0 of every tensor input, and with ``dynamic="tokens"`` on every dim
    of integer ones (token ids, attention masks), keyed by forward's parameter names: export
    keeps them symbolic unless the program fixes them. (Every dim of a float input symbolic costs
    minutes of symbolic reasoning on window-attention models; batch and length are what a pruned
    or gated graph must not fix.)"""
    def spec(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or not value.dim():
            return None
        if dynamic == "batch" or value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            return {0: torch.export.Dim.AUTO}
        return {d: torch.export.Dim.AUTO for d in range(value.dim())}

    arguments = inspect.signature(work.forward).bind(*bound.args, **bound.kwargs).arguments
    return {name: pytree.tree_map(spec, value) for name, value in arguments.items()}


def has_token_inputs(bound: BoundInputs) -> bool:
    """Whether the inputs hold an integer tensor with more than one dim (ids of a sequence)."""
    leaves = pytree.tree_leaves((bound.args, bound.kwargs))
    return any(isinstance(t, torch.Tensor) and t.dim() > 1 and not (t.dtype.is_floating_point or t.dtype.is_complex
                                                                      or t.dtype == torch.bool) for t in leaves)


def _drop_guard_calls(graph: fx.Graph) -> None:
    """``torch.export`` inserts a call of its input-guard module; the inputs are positional and
    fixed here, so the check has nothing left to guard (the GraphModule then never copies it)."""
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target) == "_guards_fn" and not node.users:
            graph.erase_node(node)


def mark_constant_buffers(gm: fx.GraphModule, work: nn.Module) -> None:
    """Non-persistent buffers (rotary ``inv_freq``, cached masks) are constants of the model,
    not channels: they are marked so the analysis does not give them channel spaces, which would
    tie every head's rotary dims together."""
    constant: set[str] = set()
    for prefix, module in work.named_modules():
        for name in getattr(module, "_non_persistent_buffers_set", ()):
            constant.add(f"{prefix}.{name}" if prefix else name)
    for node in gm.graph.nodes:
        if node.op == "get_attr" and str(node.target) in constant:
            node.meta[CONSTANT_BUFFER] = True


def module_of(node: fx.Node) -> Optional[str]:
    """The qualified name of the innermost module an exported node was called in."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, _ = list(stack.values())[-1]
    return str(path) or None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
