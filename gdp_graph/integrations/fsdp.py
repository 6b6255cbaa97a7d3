"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the weights, with the gates replicated::

    gated = gdp_graph.attach(model, policy, example_inputs=x, total_steps=steps)
    shard_weights(gated, mesh=init_device_mesh("cuda", (world,)))   # every rank, same seed
    driver = GateDriver(gated, reduce_gate_grads=True)
    for x, y in loader:                                   # each rank its own share of the data
        loss_fn(gated(x), y).backward()
        driver.before_optimizer_step(); optimizer.step(); optimizer.zero_grad()
        driver.after_optimizer_step(step)
    pruned = driver.finalize()                            # gathers the full weights first

The gates are a few kilobytes: sharding them would only add collectives to every gate read, so
:func:`shard_weights` leaves them out (``ignored_params``) and nothing averages their gradients;
``GateDriver(reduce_gate_grads=True)`` does. Finalize needs whole weights: :func:`gather_full_weights`
(called by :meth:`GateDriver.finalize`) replaces every sharded parameter by its full tensor.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gdp_graph.gates.model import GatedModel

__all__ = ["gather_full_weights", "is_sharded", "shard_weights"]


def shard_weights(gated: GatedModel, **fully_shard_kwargs: Any) -> GatedModel:
    """``fully_shard`` ``gated`` (in place, every rank) with its gates left replicated."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # pragma: no cover - torch < 2.6
        raise ImportError("shard_weights needs torch.distributed.fsdp.fully_shard (FSDP2, torch >= 2.6)") from None
    fully_shard(gated, ignored_params=set(gated.gate_parameters()), **fully_shard_kwargs)
    return gated


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a sharded DTensor."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(p, DTensor) for p in module.parameters())


def gather_full_weights(module: nn.Module) -> None:
    """Replace every DTensor parameter of ``module`` by its full tensor, in place (a collective:
    every rank calls it). The module then runs unsharded, as before :func:`shard_weights`."""
    from torch.distributed.tensor import DTensor
    for owner in module.modules():
        for name, param in list(owner._parameters.items()):
            if isinstance(param, DTensor):
                owner._parameters[name] = nn.Parameter(param.full_tensor().detach(), requires_grad=param.requires_grad)
