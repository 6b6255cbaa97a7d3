"""Parameters and FLOPs: measured with ``torch.utils.flop_counter.FlopCounterMode``, and a
differentiable count written from the gates; latency where a measured table is attached
(:mod:`gdp_graph.latency`).

Each layer's cost is measured once on the example inputs. A layer's cost after pruning is its
original cost times the kept fraction of its consumed input channels times the kept fraction
of its output channels (bilinear in the neighbouring groups' gates), times its block's gate.
With 0/1 gates that is the exact count of a conv/linear network; with soft gates it is the
differentiable budget GDP trains against.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.channels import Chan


@dataclass(frozen=True)
class Cost:
    flops: float
    params: int
    latency: Optional[float] = None  #: seconds, where a latency table is attached

    def metric(self, name: str) -> float:
        if name == "latency":
            if self.latency is None:
                raise ValueError("the latency metric needs a table measured on the device: attach one "
                                 "first (gdp_graph.latency.attach_latency)")
            return float(self.latency)
        if name not in ("flops", "params"):
            raise ValueError(f"unknown metric {name!r}: expected 'flops', 'params' or 'latency'")
        return float(self.flops if name == "flops" else self.params)


class TermLatency(Protocol):
    """Latency of a cost model's terms given their scales (:mod:`gdp_graph.latency.fit`)."""

    total: float

    def evaluate(self, scales: torch.Tensor, block_scale: torch.Tensor) -> torch.Tensor: ...


def count_params(module: nn.Module) -> int:
    """Number of parameters (each shared parameter once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def count_flops(module: nn.Module, inputs: Sequence[Any]) -> float:
    """FLOPs of one forward pass on ``inputs`` as FlopCounterMode counts them."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return float(counter.get_total_flops())


def model_cost(module: nn.Module, inputs: Sequence[Any]) -> Cost:
    return Cost(count_flops(module, inputs), count_params(module))


def traced_cost(analysis: Analysis) -> Cost:
    """The traced model's cost on its example inputs: the sum of the per-node FLOPs that
    :func:`annotate_flops` left (the same FlopCounterMode count, already paid for by the cost
    model), or a fresh count when they are absent."""
    gm = analysis.traced.gm
    if not _has_node_flops(gm):
        return model_cost(gm, analysis.traced.example_inputs)
    return Cost(float(sum(n.meta["flops"] for n in _computing(gm))), count_params(gm))


def _computing(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]


def _has_node_flops(gm: fx.GraphModule) -> bool:
    """Whether every computing node carries its FLOPs (from ``analyze(count_flops=True)`` or an
    earlier :func:`annotate_flops`)."""
    return all("flops" in n.meta for n in _computing(gm))


class FlopsPerNode(fx.Interpreter):
    """Runs a traced graph once and stores each node's FLOPs (as FlopCounterMode counts them) in
    ``node.meta["flops"]``."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        # one counter for the whole run, read before and after each node: entering a counter
        # per node cost as much as the arithmetic
        with FlopCounterMode(display=False) as self._counter:
            return super().run(*args, **kwargs)

    def run_node(self, n: fx.Node) -> Any:
        if n.op not in ("call_module", "call_function", "call_method"):
            return super().run_node(n)
        before = self._counter.get_total_flops()
        out = super().run_node(n)
        n.meta["flops"] = float(self._counter.get_total_flops() - before)
        return out


def annotate_flops(gm: fx.GraphModule, values: Mapping[str, Any]) -> None:
    """``node.meta["flops"]`` for every node of ``gm``, on the recorded placeholder ``values``."""
    inputs = {n: values[n.name] for n in gm.graph.find_nodes(op="placeholder")}
    with torch.no_grad():
        FlopsPerNode(gm, garbage_collect_values=True).run(initial_env=inputs, enable_io_processing=False)


class CostModel:
    """Per-layer costs and where each layer's input/output channels sit among all gate units.

    Units of all groups are numbered globally (``offsets[gid] + unit``); ``gate_vector`` maps
    per-group gates to that numbering. ``evaluate(units, blocks)`` returns (flops, params) as
    differentiable tensors.
    """

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.offsets, self.num_units, self._global_of_element = _global_numbering(analysis)
        gm = analysis.traced.gm
        if not _has_node_flops(gm):
            annotate_flops(gm, analysis.traced.values)
        terms = _Terms(analysis, self._global_of_element)
        self.node_names = terms.node_names
        self.term_flops = torch.tensor(terms.flops, dtype=torch.float64)
        self.term_params = torch.tensor(terms.params, dtype=torch.float64)
        self.term_block = torch.tensor(terms.blocks, dtype=torch.long)
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
        self.pos_index, self.pos_factor = cat(terms.pos_index), cat(terms.pos_factor)
        self.factor_term = torch.tensor(terms.factor_term, dtype=torch.long)
        self.factor_count = torch.zeros(len(terms.factor_term)).index_add_(0, self.pos_factor,
                                                                          torch.ones(self.pos_factor.numel()))
        self._counts = Cost(float(self.term_flops.sum()), int(self.term_params.sum()))
        #: per-term latency where a measured table is attached (gdp_graph.latency.attach_latency)
        self.latency: Optional[TermLatency] = None

    @property
    def total(self) -> Cost:
        """The original model's cost (with its latency where a table is attached)."""
        if self.latency is None:
            return self._counts
        return Cost(self._counts.flops, self._counts.params, float(self.latency.total))

    def _positions(self, chan: Any, value: torch.Tensor, dim: Optional[int]) -> torch.Tensor:
        """Global unit index of every position of the tracked dims (``dim`` only, if given)."""
        return _positions(self._global_of_element, chan, value, dim)

    # -- evaluation -----------------------------------------------------------------------------
    def gate_vector(self, group_gates: Mapping[int, torch.Tensor], dtype=torch.float32) -> torch.Tensor:
        """All units' gates in global order (1 for groups without gates), plus a trailing 1
        for positions outside any group."""
        device = next((g.device for g in group_gates.values()), torch.device("cpu"))
        parts = []
        for g in self.analysis.groups:
            v = group_gates.get(g.id)
            parts.append(v.to(dtype) if v is not None else torch.ones(g.size, dtype=dtype, device=device))
        parts.append(torch.ones(1, dtype=dtype, device=device))
        return torch.cat(parts)

    def evaluate(self, units: torch.Tensor,
                 block_gates: Optional[Mapping[int, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(flops, params) for a global unit vector from :meth:`gate_vector`."""
        scale, block_scale = self.term_scales(units, block_gates)
        scale = scale * block_scale
        flops = (self.term_flops.to(device=units.device, dtype=units.dtype) * scale).sum()
        params = (self.term_params.to(device=units.device, dtype=units.dtype) * scale).sum()
        return flops, params

    def evaluate_metric(self, units: torch.Tensor, block_gates: Optional[Mapping[int, torch.Tensor]],
                        metric: str) -> torch.Tensor:
        """One metric (``flops``, ``params`` or ``latency``, in seconds) for a unit vector from
        :meth:`gate_vector`, differentiable in the gates."""
        if metric != "latency":
            return self.evaluate(units, block_gates)[0 if metric == "flops" else 1]
        if self.latency is None:
            raise ValueError("the latency metric needs a measured table: "
                             "gdp_graph.latency.attach_latency(cost_model, ...)")
        return self.latency.evaluate(*self.term_scales(units, block_gates))

    def term_scales(self, units: torch.Tensor, block_gates: Optional[Mapping[int, torch.Tensor]] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each term's scale from the channel gates (product of its factors' mean gates) and
        from its block's gate (1 outside gated blocks)."""
        device, dtype = units.device, units.dtype
        n_terms = self.term_flops.numel()
        scale = torch.ones(n_terms, dtype=dtype, device=device)
        if self.pos_index.numel():
            sums = torch.zeros(self.factor_term.numel(), dtype=dtype, device=device).index_add(
                0, self.pos_factor.to(device), units[self.pos_index.to(device)])
            means = sums / self.factor_count.to(device=device, dtype=dtype)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # index_reduce is "beta"; prod with grads is what we need
                scale = scale.index_reduce(0, self.factor_term.to(device), means, "prod")
        if block_gates:
            block_scale = torch.ones(n_terms, dtype=dtype, device=device)
            for bid, g in block_gates.items():
                block_scale = torch.where(self.term_block.to(device) == bid, g.to(dtype).reshape(()), block_scale)
            return scale, block_scale
        return scale, torch.ones(n_terms, dtype=dtype, device=device)

    def plan_cost(self, keep: Mapping[int, Sequence[int]], removed_blocks: Sequence[int] = ()) -> Cost:
        """Predicted cost of a plan (0/1 gates)."""
        gates = {}
        for gid, kept in keep.items():
            v = torch.zeros(self.analysis.groups[gid].size, dtype=torch.float64)
            v[list(kept)] = 1.0
            gates[gid] = v
        units = self.gate_vector(gates, torch.float64)
        blocks = {b: torch.zeros((), dtype=torch.float64) for b in removed_blocks}
        f, p = self.evaluate(units, blocks)
        latency = None if self.latency is None else float(self.evaluate_metric(units, blocks, "latency"))
        return Cost(float(f), int(round(float(p))), latency)

    def unit_costs(self) -> dict[int, Cost]:
        """What removing one (free) unit of each group saves."""
        base = self.gate_vector({}, torch.float64)
        f0, p0 = self.evaluate(base)
        out = {}
        for g in self.analysis.groups:
            free = (~g.frozen_units).nonzero().flatten()
            if free.numel() == 0:
                out[g.id] = Cost(0.0, 0)
                continue
            units = base.clone()
            units[int(self.offsets[g.id]) + int(free[0])] = 0.0
            f, p = self.evaluate(units)
            out[g.id] = Cost(float(f0 - f), int(round(float(p0 - p))))
        return out

    def group_shares(self) -> dict[int, float]:
        """Share of the model's FLOPs that the group's layers carry (the report's column)."""
        unit = self.unit_costs()
        total = max(self.total.flops, 1.0)
        return {gid: unit[gid].flops * self.analysis.groups[gid].size / total for gid in unit}


def _global_numbering(analysis: Analysis) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Each group's first global unit index, the number of units, and the global unit index of
    every element (-1 outside any group)."""
    sizes = [g.size for g in analysis.groups]
    offsets = torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0) if sizes else torch.zeros(0, dtype=torch.long)
    group_of, unit_of = analysis.group_of_element, analysis.unit_of_element
    global_of = torch.where(group_of >= 0, offsets[group_of.clamp_min(0)] + unit_of, torch.full_like(group_of, -1))
    return offsets, int(sum(sizes)), global_of


def _positions(global_of: torch.Tensor, chan: Any, value: torch.Tensor, dim: Optional[int]) -> torch.Tensor:
    """Global unit index of every position of ``chan``'s tracked dims (``dim`` only, if given)."""
    if not isinstance(chan, Chan):
        return torch.zeros(0, dtype=torch.long)
    parts = [global_of[t.labels.reshape(-1)] for t in chan.tracks if dim is None or dim % value.dim() in t.dims]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


class _Terms:
    """The cost model's terms, one per computing node (and per parameter read by ``get_attr``):
    its FLOPs and parameters, its block, and its factors. A term's scale is the product of its
    factors; a factor is the mean gate over the positions of one consumed input dim or one
    output track."""

    def __init__(self, analysis: Analysis, global_of: torch.Tensor):
        self.node_names: list[str] = []
        self.flops: list[float] = []
        self.params: list[float] = []
        self.blocks: list[int] = []
        self.pos_index: list[torch.Tensor] = []
        self.pos_factor: list[torch.Tensor] = []
        self.factor_term: list[int] = []
        gm, values = analysis.traced.gm, analysis.traced.values
        block_of_node: dict[str, int] = {}
        for b in analysis.blocks:
            for n in b.nodes:
                block_of_node.setdefault(n, b.id)  # blocks are listed inner first within a stage
        sites_at = _sites_at(analysis)
        count = _ParamCount(dict(gm.named_modules()), values)
        # a tied parameter (input and output embeddings) is counted once, at a node that uses
        # it: an unused alias (torch.export keeps one) would count it with no gate scaling it
        for node in sorted(gm.graph.nodes, key=lambda n: n.op == "get_attr" and not n.users):
            if node.op not in ("call_module", "call_function", "call_method", "get_attr"):
                continue
            f, p = node.meta.get("flops", 0.0), count(node)
            if f == 0 and p == 0 and node.op == "get_attr":
                continue  # every computing node is a term: it takes time even without FLOPs
            term = len(self.flops)
            self.node_names.append(node.name)
            self.flops.append(f)
            self.params.append(float(p))
            self.blocks.append(block_of_node.get(node.name, -1))
            for arg, dim in sites_at.get(node.name, []):
                src = node.args[arg]
                self._factor(_positions(global_of, src.meta.get("channels"), values[src.name], dim), term)
            chan = node.meta.get("channels")
            if isinstance(values[node.name], torch.Tensor) and isinstance(chan, Chan):
                for track in chan.tracks:
                    self._factor(global_of[track.labels.reshape(-1)], term)

    def _factor(self, idx: torch.Tensor, term: int) -> None:
        if idx.numel():
            self.pos_index.append(idx)
            self.pos_factor.append(torch.full_like(idx, len(self.factor_term)))
            self.factor_term.append(term)


def _sites_at(analysis: Analysis) -> dict[str, list[tuple[int, int]]]:
    """``{node: [(arg, dim), ...]}``: the gate sites of every group, each once."""
    sites_at: dict[str, list[tuple[int, int]]] = {}
    for g in analysis.groups:
        for s in g.gate_sites:
            at = sites_at.setdefault(s.node, [])
            if (s.arg, s.dim) not in at:
                at.append((s.arg, s.dim))
    return sites_at


class _ParamCount:
    """Parameters a node brings in that no earlier node did (each shared parameter once)."""

    def __init__(self, modules: Mapping[str, nn.Module], values: Mapping[str, Any]):
        self.modules, self.values, self.seen = modules, values, set()

    def __call__(self, node: fx.Node) -> int:
        if node.op == "call_module":
            found = list(self.modules[node.target].parameters())
        elif node.op == "get_attr" and isinstance(self.values.get(node.name), nn.Parameter):
            found = [self.values[node.name]]
        else:
            return 0
        new = [p for p in found if id(p) not in self.seen]
        self.seen.update(id(p) for p in new)
        return sum(p.numel() for p in new)
