"""First-order Taylor importance: ``|dL/dg * g|`` at gates fixed to 1, per unit and per block.

The gates are a :class:`~gdp_graph.gates.bank.GateBank` of ``clamped`` gates (``theta = 1``,
``g = clamp(theta, 0, 1)``, whose gradient passes at 1) on every group and every removable
block, inserted at the same sites GDP trains (:func:`~gdp_graph.graph.inject.insert_site_multipliers`),
so the gated copy computes exactly the original function. The user's weights are not copied
into the optimizer's reach: only the gates' gradient is taken (``torch.autograd.grad``), so no
``.grad`` is written anywhere.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import Tensor

from gdp_graph.gates.bank import GateBank
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.inject import collect_sites, insert_site_multipliers
from gdp_graph.importance.common import ImportanceError, InputsFn, LossFn, call_args, device_of, limited, to_device

__all__ = ["taylor_scores"]


def _gated_copy(analysis: Analysis) -> tuple[torch.fx.GraphModule, GateBank]:
    groups = {g.id: torch.zeros(g.size, dtype=torch.bool) for g in analysis.groups if g.gate_sites}
    blocks = [b.id for b in analysis.blocks if b.gate_sites]
    bank = GateBank(groups, blocks, kind="clamped")
    bank.to(device_of(analysis))
    for site in collect_sites(analysis, sorted(groups), blocks):
        bank.add_site(site)
    gm = insert_site_multipliers(analysis, bank, bank.sites, "importance_gates")
    for p in gm.parameters():
        p.requires_grad_(False)
    for p in bank.parameters():
        p.requires_grad_(True)
    return gm, bank


def taylor_scores(analysis: Analysis, batches: Iterable[Any], loss_fn: LossFn, *, inputs: Optional[InputsFn] = None,
                  max_batches: Optional[int] = None) -> tuple[dict[int, Tensor], dict[int, float], int]:
    """``(unit scores, block scores, batches used)``: the mean over batches of ``|dL/dg|``
    (the loss ``loss_fn(output, batch)`` on each batch, gates at 1), in the model's current
    train/eval mode (``analysis.traced.gm``'s)."""
    gm, bank = _gated_copy(analysis)
    gm.train(analysis.traced.gm.training)
    # in the bank's flat order (groups by id, then blocks by id), not ParameterDict's string order
    params = [bank.group_theta[str(g)] for g in bank.group_ids] + [bank.block_theta[str(b)] for b in bank.block_ids]
    if not params:
        return {}, {}, 0
    device = device_of(analysis)
    total = torch.zeros(bank.one_position, dtype=torch.float64)
    n = 0
    for batch in limited(batches, max_batches):
        batch = to_device(batch, device)
        args, kwargs = call_args(batch, inputs)
        loss = loss_fn(gm(*args, **kwargs), batch)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ImportanceError("taylor: loss_fn(output, batch) must return a scalar tensor, "
                                  f"got {type(loss).__name__}")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        total += flat.detach().abs().double().cpu()
        n += 1
    if n == 0:
        raise ImportanceError("importance: the batches were empty (no batch to measure on)")
    groups, blocks = bank.split(torch.cat([total / n, torch.ones(1, dtype=torch.float64)]))
    return {gid: v.clone() for gid, v in groups.items()}, {bid: float(v) for bid, v in blocks.items()}, n
