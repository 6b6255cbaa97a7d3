"""Stage 1: trace a model with torch.fx and record every node's concrete value.

A submodule that torch.fx cannot trace (data-dependent control flow, unsupported Python) does
not sink the whole model: it becomes an opaque leaf, reported by name with the reason, and the
analysis freezes every channel that touches it.
"""

from __future__ import annotations

import bisect
import dis
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
import torch.fx as fx
from torch.fx._lazy_graph_module import _LazyGraphModule
from torch import nn

from gdp_graph.graph.frontend_export import DYNAMIC, export_graph, mark_constant_buffers
from gdp_graph.graph.groups import OpaqueLeaf
from gdp_graph.graph.inputs import BoundInputs, InputError, bind_inputs, is_flag
from gdp_graph.graph.lowering import PLAIN_TRANSFORMER, lower_multihead_attention, plain_transformer_forward
from gdp_graph.graph.meta import SHAPE_ONLY, VALUE
from gdp_graph.graph.record import TraceError, first_line as _first_line, record as _record
from gdp_graph.graph.model_copy import attributes_restored, private_copy
from gdp_graph.graph.rules import has_leaf_rule
from gdp_graph.graph import shapes_only


class _Unpacking:
    """``a, b = proxy`` reading each function's bytecode once per trace.

    fx counts the unpacking targets by disassembling the caller's whole function at every
    unpack (Swin-T unpacks ``x.shape`` 39 times: 10 of its 46 ms of tracing); the instructions
    are kept by the tracer here, and read the way fx reads them. Attributes (``x.shape``) are
    proxies of this kind too."""

    def __iter__(self) -> Iterator[fx.Proxy]:
        frame = inspect.currentframe()
        calling = frame.f_back if frame is not None else None
        if calling is None:
            return super().__iter__()
        known = self.tracer.instructions.get(calling.f_code)
        if known is None:
            listed = list(dis.get_instructions(calling.f_code))
            known = self.tracer.instructions[calling.f_code] = (listed, [i.offset for i in listed])
        listed, offsets = known
        index = bisect.bisect_left(offsets, calling.f_lasti) if sys.version_info >= (3, 11) else calling.f_lasti // 2
        if listed[index].opname == "UNPACK_SEQUENCE":
            return (self[i] for i in range(listed[index].argval))
        return self.tracer.iter(self)

    def __getattr__(self, k: str) -> fx.Proxy:
        return _UnpackingAttribute(self, k)


class _UnpackingProxy(_Unpacking, fx.Proxy):
    pass


class _UnpackingAttribute(_Unpacking, fx.proxy.Attribute):
    pass


class _FallbackTracer(fx.Tracer):
    """A tracer that keeps standard layers as leaves plus a set of opaque submodules.

    It remembers which submodule it was inside when tracing failed, so the caller can mark that
    submodule opaque and try again.
    """

    def __init__(self, opaque: set[str]):
        super().__init__()
        self.opaque = opaque
        self.stack: list[str] = []
        self.instructions: dict[Any, tuple[list, list[int]]] = {}  #: code -> its instructions, offsets

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _UnpackingProxy(node, self)

    def create_arg(self, a: Any) -> Any:
        # a proxy of ours is its node: fx's own proxies take a fast path there, a subclass went
        # through the checks for parameters, tensors and modules first (a tenth of the tracing)
        if type(a) is _UnpackingProxy:
            return a.node
        return super().create_arg(a)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # a module whose type has a registered rule is one op: its rule, not its code, is used
        if isinstance(m, PLAIN_TRANSFORMER) and qualname not in self.opaque:
            return False
        if isinstance(m, torch.jit.ScriptModule):  # compiled code: one op, named by its type
            return True
        return qualname in self.opaque or has_leaf_rule(m) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        if isinstance(m, PLAIN_TRANSFORMER):
            forward = plain_transformer_forward(m, args, kwargs)
            if forward is None:  # with masks: one op, as before
                return self.create_proxy("call_module", qualname, args, kwargs)
        self.stack.append(qualname)
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


class NodeValues(Mapping[str, Any]):
    """node name -> the value recorded in ``node.meta[VALUE]``: a read-only view by name, for code
    that keys by name (one dict lookup; the index follows nodes added to the graph later).
    ``real_values``: called before a shape-only value is handed out (:mod:`.shapes_only`)."""

    def __init__(self, graph: fx.Graph, real_values: Optional[Callable[[], None]] = None):
        self._graph = graph
        self._index: dict[str, fx.Node] = {}
        self._real_values = real_values

    def node(self, name: str) -> fx.Node:
        n = self._index.get(name)
        if n is None or n.graph is not self._graph or n.name != name or len(self._index) != len(self._graph.nodes):
            self._index = {m.name: m for m in self._graph.nodes}
            n = self._index[name]
        return n

    def __getitem__(self, name: str) -> Any:
        try:
            node = self.node(name)
            if node.meta.get(SHAPE_ONLY) and self._real_values is not None:
                self._real_values()
            return node.meta[VALUE]
        except KeyError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        return (n.name for n in self._graph.nodes if VALUE in n.meta)

    def __len__(self) -> int:
        return sum(VALUE in n.meta for n in self._graph.nodes)


@dataclass
class TracedModel:
    """A traced copy of the user's model plus what the example inputs showed about it.

    Each node's concrete value on the example inputs is in ``node.meta[VALUE]``; ``values`` reads
    them by node name."""

    gm: fx.GraphModule
    example_inputs: tuple[Any, ...]  #: positional inputs of ``gm`` (see :mod:`.inputs`)
    opaque: list[OpaqueLeaf] = field(default_factory=list)
    inputs: Optional[BoundInputs] = None  #: the example inputs as the user gave them
    front_end: str = "fx"  #: "fx" (symbolic tracing) or "export" (torch.export, ATen graph)
    front_end_reason: str = ""  #: why that front end was used
    #: the private eval-mode copy of the user's model that was traced (its class and code, for
    #: a rewrite that keeps the class); never the user's own object
    module: Optional[nn.Module] = None

    def __post_init__(self) -> None:
        #: node name -> concrete value on the example inputs (real numbers: see :meth:`real_values`)
        self.values = NodeValues(self.gm.graph, self.real_values)

    def real_values(self) -> None:
        """Give every node its real value where the recording kept only shapes
        (``node.meta[SHAPE_ONLY]``, :mod:`.shapes_only`): one full recording run."""
        if shapes_only.has_shapes_only(self.gm.graph):
            _record(self.gm, self.example_inputs)

    def node(self, name: str) -> fx.Node:
        return self.values.node(name)


def symbolic_trace_with_fallback(model: nn.Module, max_opaque: int = 64,
                                 fixed: Optional[dict[str, Any]] = None) -> tuple[fx.GraphModule, list[OpaqueLeaf]]:
    """Trace ``model``; submodules that fail to trace become opaque leaves. ``fixed`` are
    forward parameters specialized to a value (fx ``concrete_args``).

    Raises:
        TraceError: when the failure is in the top-level forward itself.
    """
    opaque: dict[str, str] = {}
    while True:
        tracer = _FallbackTracer(set(opaque))
        try:
            graph = tracer.trace(model, concrete_args=fixed or None)
        except Exception as exc:  # noqa: BLE001 - any tracing failure is reported, then retried
            if not tracer.stack or len(opaque) >= max_opaque:
                raise TraceError(
                    f"cannot trace {type(model).__name__}.forward: {_first_line(exc)}"
                ) from exc
            opaque[tracer.stack[-1]] = _first_line(exc)
            continue
        name = type(model).__name__
        gm = _LazyGraphModule(tracer.root, graph, name)  # its code is generated when first called
        return gm, [OpaqueLeaf(module=k, reason=v) for k, v in opaque.items()]


def _restore_output_class(gm: fx.GraphModule, eager_output: Any) -> None:
    """fx records a returned dict subclass (a Hugging Face ``ModelOutput``) as a plain dict:
    build the original class again, so the traced and pruned models return what the user's did."""
    cls = type(eager_output)
    if not isinstance(eager_output, dict) or cls is dict:
        return
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    value = output.args[0]
    if not isinstance(value, dict) or list(value) != list(eager_output):  # fx: an immutable_dict
        return
    with gm.graph.inserting_before(output):
        rebuilt = gm.graph.call_function(cls, (), dict(value))
    output.args = (rebuilt,)
    gm.recompile()


def _trace_exported(model: nn.Module, bound: BoundInputs, reason: str, count_flops: bool = False,
                    dynamic: str = "batch", eager_check: Optional[nn.Module] = None) -> TracedModel:
    """The ``torch.export`` front end on a fresh private copy (fx may have left marks on its).

    ``eager_check``: where the export fails, first run this copy of the model eagerly, so that
    a model that does not run on its inputs at all is reported as such (checked only on failure:
    a decoder's eager forward was a tenth of its analysis)."""
    work = private_copy(model)
    try:
        with torch.no_grad():
            gm, flat = export_graph(work, bound, dynamic)
        gm.eval()
        _record(gm, flat, count_flops)
    except Exception as exc:  # noqa: BLE001 - both front ends failed: say why for each
        if eager_check is not None and not _on_meta(eager_check):  # a meta model cannot run (``.item()``)
            _run_eagerly(model, eager_check, bound)
        if isinstance(exc, TraceError):
            raise
        hint = ""
        if "in output, which is not a known type" in str(exc):  # e.g. a KV cache object
            hint = " (the output holds an object that is not tensors: ask the model for tensors only, " \
                   "e.g. use_cache=False in the example inputs of a Hugging Face decoder)"
        raise TraceError(f"cannot trace {type(model).__name__}: {reason}; torch.export failed too: "
                         f"{_first_line(exc)}{hint}") from exc
    return TracedModel(gm=gm, example_inputs=flat, inputs=bound, module=work,
                       front_end="export", front_end_reason=reason)


def _run_eagerly(model: nn.Module, work: nn.Module, bound: BoundInputs) -> Any:
    try:
        with torch.no_grad():
            return bound.call(work)
    except Exception as exc:  # noqa: BLE001
        raise TraceError(f"{type(model).__name__} does not run on example inputs of shape {bound.describe()}: "
                         f"{_first_line(exc)}") from exc


def _on_meta(module: nn.Module) -> bool:
    """A model created on the meta device (shapes only, no weights): analysed, never run."""
    return any(p.is_meta for p in module.parameters())


def _trace_fx(work: nn.Module, bound: BoundInputs, count_flops: bool) -> tuple[fx.GraphModule, list[OpaqueLeaf]]:
    """The torch.fx front end on ``work``: trace (opaque leaves where it fails), lower, record."""
    fixed = {k: v for k, v in bound.fixed.items() if is_flag(v)}
    with attributes_restored(work):
        gm, opaque = symbolic_trace_with_fallback(work, fixed=fixed)
    lower_multihead_attention(gm)
    mark_constant_buffers(gm, work)
    gm.eval()
    _record(gm, bound.positional, count_flops, shapes=True)
    return gm, opaque


def _keep_output_class(model: nn.Module, work: nn.Module, bound: BoundInputs, gm: fx.GraphModule,
                       eager_output: Any, count_flops: bool) -> None:
    """A dict output may be a ``ModelOutput``: rebuilt as such (:func:`_restore_output_class`),
    which needs the eager output's class, then recorded again."""
    if not isinstance(next(reversed(gm.graph.nodes)).meta.get(VALUE), dict):
        return
    count = len(gm.graph.nodes)
    _restore_output_class(gm, eager_output if eager_output is not None else _run_eagerly(model, work, bound))
    if len(gm.graph.nodes) != count:
        _record(gm, bound.positional, count_flops, shapes=True)


FRONT_ENDS = ("auto", "fx", "export")


def _bound_inputs(model: nn.Module, example_inputs: Any, front_end: str, dynamic: str) -> BoundInputs:
    """The arguments of :func:`trace`, checked, and the example inputs bound to forward's parameters."""
    if front_end not in FRONT_ENDS:
        raise TraceError(f"front_end must be one of {', '.join(FRONT_ENDS)}, got {front_end!r}")
    if dynamic not in DYNAMIC:
        raise TraceError(f"dynamic must be one of {', '.join(DYNAMIC)}, got {dynamic!r}")
    if not isinstance(model, nn.Module):
        raise TraceError(f"expected an nn.Module, got {type(model).__name__}")
    try:
        return bind_inputs(model.forward, example_inputs)
    except InputError as exc:
        raise TraceError(str(exc)) from None


def trace(model: nn.Module, example_inputs: Any, front_end: str = "auto", count_flops: bool = False,
          dynamic: str = "batch") -> TracedModel:
    """Trace a deep copy of ``model`` in eval mode and run it on ``example_inputs``.

    The user's model is never modified. Example inputs are a tensor, a tuple of positional
    inputs, or a dict of keyword inputs (:mod:`gdp_graph.graph.inputs`).

    ``front_end``: ``"fx"`` (symbolic tracing, opaque leaves where it fails), ``"export"``
    (``torch.export``, an ATen graph: :mod:`gdp_graph.graph.frontend_export`), or ``"auto"``:
    fx first, export where fx fails or leaves a submodule opaque. The traced model says which
    front end was used and why (``front_end``, ``front_end_reason``). ``count_flops``: also
    leave each node's FLOPs in ``node.meta["flops"]`` (see :class:`~gdp_graph.graph.record._Recorder`). ``dynamic``: the
    input dims an export keeps symbolic, ``"batch"`` or ``"tokens"`` (the sequence length of
    integer inputs too; :data:`~gdp_graph.graph.frontend_export.DYNAMIC`).
    """
    bound = _bound_inputs(model, example_inputs, front_end, dynamic)
    work = private_copy(model)
    # The eager forward only runs where it is needed (a forward costs as much as the rest of
    # the analysis): lazy modules materialize on it, a dict output needs its class, and a
    # failure is first checked against the plain model so the error says what is wrong.
    eager_output = None
    if any(isinstance(m, nn.modules.lazy.LazyModuleMixin) for m in work.modules()):
        eager_output = _run_eagerly(model, work, bound)
    if front_end == "export":
        return _trace_exported(model, bound, "requested (front_end='export')", count_flops, dynamic)
    if bound.variadic:
        reason = f"inputs given to {', '.join(bound.variadic)}, which torch.fx cannot trace"
        if front_end == "fx":
            raise TraceError(f"{type(model).__name__}: {reason}")
        return _trace_exported(model, bound, reason, count_flops, dynamic)
    try:
        gm, opaque = _trace_fx(work, bound, count_flops)
    except TraceError as exc:
        if front_end == "fx":
            if not _on_meta(work):  # a meta model cannot run eagerly (``.item()``): nothing to learn
                _run_eagerly(model, work, bound)
            raise
        return _trace_exported(model, bound, f"torch.fx could not trace it ({exc})", count_flops, dynamic,
                               eager_check=work)
    if opaque and front_end == "auto":
        reason = f"torch.fx left {len(opaque)} submodule(s) opaque ({opaque[0].module}: {opaque[0].reason})"
        try:
            return _trace_exported(model, bound, reason, count_flops, dynamic)
        except TraceError:
            pass  # keep the fx graph with its opaque leaves, reported as such
    _keep_output_class(model, work, bound, gm, eager_output, count_flops)
    return TracedModel(gm=gm, example_inputs=bound.positional, opaque=opaque, module=work,
                       inputs=bound, front_end="fx", front_end_reason="torch.fx symbolic tracing succeeded")
