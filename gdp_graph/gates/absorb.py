"""Folding gate multipliers into the weights that consume them (exactly).

A gate site multiplies input ``arg`` of a node along ``dim``. When that node is a conv,
transposed conv or linear layer (or ``F.linear``/matmul with a parameter operand) whose weight
no other node uses, the multiplier can move into the weight's input columns without changing
the output. :func:`absorb_scales` does it in place; :func:`absorbing_weight` says whether (and
where) it can, without touching anything. Used by ``finalize`` (every gate, on a copy) and by
the gated model at its cut (``regularizer.reopen``: kept gates go to 1, their values move into
the weights).
"""

from __future__ import annotations

import operator
from typing import Any, Mapping, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.prune.rewrite import SiteScales

__all__ = ["absorb_scales", "absorbing_weight", "reopen_into_weights", "weight_usage"]


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_MATMULS = (torch.matmul, operator.matmul)


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class _Usage:
    """Which weights may be scaled in place: used by exactly one node and not shared."""

    def __init__(self, gm: fx.GraphModule, weights: nn.Module):
        self.calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op in ("call_module", "get_attr"):
                self.calls[str(n.target)] = self.calls.get(str(n.target), 0) + 1
        self.names: dict[int, int] = {}
        for _, t in [*weights.named_parameters(remove_duplicate=False), *weights.named_buffers(remove_duplicate=False)]:
            self.names[id(t)] = self.names.get(id(t), 0) + 1

    def owned(self, target: str, tensor: Tensor) -> bool:
        return self.calls.get(target, 0) == 1 and self.names.get(id(tensor), 0) <= 1


def absorbing_weight(node: fx.Node, arg: int, dim: int, ndim: int, weights: nn.Module,
                     usage: _Usage) -> Optional[tuple[Tensor, list[int]]]:
    """The weight of ``node`` that can take a multiplier over the positions of input ``arg``
    along ``dim``, and the shape to view the multiplier in; None when no weight can."""
    last = dim % ndim == ndim - 1
    if node.op == "call_module":
        m = weights.get_submodule(str(node.target))
        w = getattr(m, "weight", None)
        if arg != 0 or not isinstance(w, Tensor) or not usage.owned(str(node.target), w):
            return None
        if type(m) in _CONVS and m.groups == 1 and dim % ndim == 1:
            shape = [1, -1] + [1] * (w.dim() - 2)
        elif type(m) in _TRANSPOSED and m.groups == 1 and dim % ndim == 1:
            shape = [-1] + [1] * (w.dim() - 1)
        elif type(m) is nn.Linear and last:
            shape = [1, -1]
        else:
            return None
        return w, shape
    if node.op == "call_function" and arg == 0 and last:
        other = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight", node.kwargs.get("other"))
        if not isinstance(other, fx.Node) or other.op != "get_attr":
            return None
        w = _attr(weights, str(other.target))
        if not isinstance(w, Tensor) or not w.is_floating_point() or not usage.owned(str(other.target), w):
            return None
        if node.target is F.linear and w.dim() == 2:
            shape = [1, -1]
        elif node.target in _MATMULS and w.dim() >= 2:
            shape = [-1, 1]
        else:
            return None
        return w, shape
    return None


def _absorb_site(node: fx.Node, arg: int, dim: int, ndim: int, scale: Tensor, weights: nn.Module,
                 usage: _Usage) -> bool:
    """Fold ``scale`` into the weight :func:`absorbing_weight` names; False when there is none."""
    found = absorbing_weight(node, arg, dim, ndim, weights, usage)
    if found is None:
        return False
    w, shape = found
    with torch.no_grad():
        w.mul_(scale.to(w).reshape(shape))
    return True


def absorb_scales(analysis: Analysis, weights: nn.Module, scales: Mapping[tuple[str, int, int], Tensor],
                  skip_nodes: frozenset[str] = frozenset()) -> SiteScales:
    """Fold ``scales`` (``{(node, arg, dim): multiplier over the positions}``) into ``weights``
    in place (a module with the traced graph's structure); returns those no weight could take,
    as ``site_scales`` for :func:`~gdp_graph.prune.rewrite.rewrite`. Sites at ``skip_nodes`` (e.g.
    inside removed blocks) are ignored; all-ones scales are nothing to do.

    Raises:
        ValueError: two scales on the same node input along different dims that no weight
            could take (``rewrite`` keeps one scale per input).
    """
    gm = analysis.traced.gm
    nodes = {n.name: n for n in gm.graph.nodes}
    values = analysis.traced.values
    usage = _Usage(gm, weights)
    kept: SiteScales = {}
    for (name, arg, dim), scale in scales.items():
        if name in skip_nodes:
            continue
        node = nodes[name]
        x = values[node.args[arg].name]
        ndim, size = x.dim(), x.shape[dim]
        scale = scale.detach().reshape(-1).float().cpu()
        scale = scale.expand(size).clone() if scale.numel() == 1 else scale
        if scale.numel() != size:
            raise ValueError(f"scale for input {arg} of node '{name}' has {scale.numel()} values for {size} positions")
        if bool((scale == 1).all()) or _absorb_site(node, arg, dim, ndim, scale, weights, usage):
            continue
        if (name, arg) in kept:
            old_dim, old = kept[(name, arg)]
            if old_dim != dim:
                raise ValueError(f"node '{name}' input {arg}: gates along dims {old_dim} and {dim} that no weight "
                                 "can absorb; a pruned graph keeps one multiplier per input")
            scale = old * scale
        kept[(name, arg)] = (dim, scale)
    return kept


def weight_usage(analysis: Analysis, weights: nn.Module) -> _Usage:
    """Which weights of ``weights`` (a module with the traced graph's structure) may be scaled
    in place (see :func:`absorbing_weight`)."""
    return _Usage(analysis.traced.gm, weights)



def reopen_into_weights(analysis: Analysis, bank: Any, module: nn.Module) -> int:
    """Fix every kept gate of ``bank`` (a :class:`~gdp_graph.gates.bank.GateBank` after its cut)
    at 1 and move its value into the weights of ``module`` (the gated model's graph) that it
    scales, so the model computes exactly what it did: a kept gate that had fallen near 0 no
    longer holds its unit down, and nothing jumps. A unit with a site no weight can take (a
    shared layer, an activation operand) keeps its value. Returns how many live gates were
    below 0.5."""
    nodes = {n.name: n for n in analysis.traced.gm.graph.nodes}
    usage = weight_usage(analysis, module)
    pinned = torch.zeros(bank.one_position + 1, dtype=torch.bool)
    for i, site in enumerate(bank.sites):
        if absorbing_weight(nodes[site.node], site.arg, site.dim, site.ndim, module, usage) is None:
            pinned[getattr(bank, f"site_index_{i}").reshape(-1).cpu()] = True
    with torch.no_grad():
        values = bank.flat()[: bank.one_position].detach().float()
        before = bank.site_values()
    low = bank.low_gates()
    keep_value = pinned[: bank.one_position].to(values.device) | bank.frozen
    bank.fix_at(torch.where(keep_value, values, torch.ones_like(values)))
    after = bank.site_values()
    ratios = {key: torch.where(after[key] == 0, torch.ones_like(v), v / after[key].clamp_min(1e-30))
              for key, v in before.items()}
    left = absorb_scales(analysis, module, ratios)
    if left:  # every site holding a unit now at 1 was checked above
        raise RuntimeError(f"reopen: gate values at {sorted(left)[:3]} found no weight to move into")
    return low
