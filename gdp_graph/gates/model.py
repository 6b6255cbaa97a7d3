"""The gated model: the user's model (a traced copy) with GDP gates, trained in the user's own
loop, and the pieces that drive the gates during training (regularizer, lambda controller,
epsilon schedule).

:class:`GatedModel` is a copy of the traced graph with ONE call to the gate bank right after
the inputs, computing every site's multiplier once per forward
(:func:`gdp_graph.graph.inject.insert_site_multipliers`, the same pass that builds the gated
reference ``verify`` compares against). Gates are ordinary parameters of the model: any
optimizer, autocast and DistributedDataParallel treat them like the model's own weights. The
training-time pieces are driven by :meth:`GatedModel.penalty`, :meth:`GatedModel.step` and
:meth:`GatedModel.end_epoch`; :func:`gdp_graph.gates.finalize.finalize` turns the result into
the exact smaller model.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from gdp_graph.gates.bank import GateBank, GateError
from gdp_graph.gates.budget import BudgetController, hard_fraction, soft_fraction
from gdp_graph.gates.regularizers import make_regularizer
from gdp_graph.gates.schedule import EpsilonRamp
from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import CostModel
from gdp_graph.graph.inject import collect_sites, insert_site_multipliers
from gdp_graph.policy import Resolution
from gdp_graph.vocabulary import DEFAULT_T

__all__ = ["GatedModel", "GateError", "polarization_stats"]


def polarization_stats(values: Tensor) -> dict[str, float]:
    """Fractions of ``values`` that are ``== 0``, in ``(0, 0.01)``, ``[0.01, 0.99)``, ``>= 0.99``."""
    v = values.detach().double().reshape(-1)
    n = max(v.numel(), 1)
    return {"zero": float((v == 0).sum()) / n,
            "near_zero": float(((v > 0) & (v < 0.01)).sum()) / n,
            "middle": float(((v >= 0.01) & (v < 0.99)).sum()) / n,
            "near_one": float((v >= 0.99).sum()) / n}


class GatedModel(nn.Module):
    """The user's model (a traced copy) with learnable gates, trained in the user's own loop.

    Built from an :class:`Analysis` and a policy :class:`Resolution` (which groups and blocks
    get gates, and the regularizer / target / schedules of its policy)::

        gated = GatedModel(analysis, resolution, total_steps=epochs * len(loader))
        loss = task_loss(gated(x), y) + gated.penalty()
        loss.backward(); optimizer.step(); gated.step()
        pruned = gated.finalize()

    Args:
        total_steps: training iterations the epsilon schedule spans (needed by ``gdp`` with an
            iteration schedule); with an epoch schedule, ``total_steps // steps_per_epoch``
            epochs.
        steps_per_epoch: lets :meth:`step` notice epoch ends (else call :meth:`end_epoch`).
        init_gate: the value every smoothed-L0 gate starts at.

    ``state_dict()`` holds the model's weights, every ``theta``, epsilon, the step/epoch
    counters, the latched zeros and (as extra state) lambda and the controller: loading it into
    a fresh model built the same way resumes exactly.
    """

    def __init__(self, analysis: Analysis, resolution: Resolution, *, total_steps: Optional[int] = None,
                 steps_per_epoch: Optional[int] = None, init_gate: float = 0.99):
        super().__init__()
        policy = resolution.policy
        reg = policy.regularizer
        self.analysis = analysis
        self.resolution = resolution
        self.policy = policy
        self.metric = policy.target.metric
        self.threshold = float(reg.threshold)
        self.steps_per_epoch = _positive_or_none(steps_per_epoch, "steps_per_epoch")
        total_steps = _positive_or_none(total_steps, "total_steps")
        kind = "smoothed_l0" if reg.name == "gdp" else "clamped"
        self.epsilon_schedule: Optional[EpsilonRamp] = None
        self.epsilon_per = "iteration"
        self._schedule_problem: Optional[str] = None
        if kind == "smoothed_l0":
            self._init_epsilon_schedule(total_steps)
        groups = {gid: analysis.groups[gid].frozen_units.clone() for gid in resolution.gated_groups()}
        blocks = resolution.gated_blocks()
        cfg = reg.epsilon if kind == "smoothed_l0" else None
        eps0 = cfg.start if cfg is not None else 1.0
        bank = GateBank(groups, blocks, kind=kind, epsilon=eps0, init_gate=init_gate)
        bank.to(_device_of(analysis.traced.gm))
        for site in collect_sites(analysis, sorted(groups), blocks):
            bank.add_site(site)
        self.module = insert_site_multipliers(analysis, bank, bank.sites, "gdp_gates")
        self._bank_name = next(n for n, m in self.module.named_children() if m is bank)
        self.cost_model = CostModel(analysis)
        self.regularizer = make_regularizer(reg.name, self.cost_model, metric=self.metric,
                                            t=reg.t if reg.t is not None else DEFAULT_T)
        ctrl = reg.lambda_controller
        self.controller: Optional[BudgetController] = None
        self.controller_per = ctrl.step
        self._lambda = float(reg.lambda_)
        if ctrl.kind == "proportional":
            self.controller = BudgetController(policy.target.fraction, metric=self.metric, lambda_init=reg.lambda_,
                                               tolerance=policy.target.tolerance, gain=ctrl.gain,
                                               lambda_min=ctrl.min, lambda_max=ctrl.max)
        self.train()

    def _init_epsilon_schedule(self, total_steps: Optional[int]) -> None:
        """The epsilon schedule of the policy over the training length; without a length the
        gates still work (at epsilon start) and :meth:`step` says what is missing."""
        cfg = self.policy.regularizer.epsilon
        if cfg is None:
            raise GateError("the gdp regularizer needs an epsilon schedule (regularizer.epsilon)")
        self.epsilon_per = cfg.step
        length = total_steps
        if cfg.step == "epoch":
            length = None if total_steps is None or self.steps_per_epoch is None \
                else max(1, total_steps // self.steps_per_epoch)
            self._schedule_problem = ("regularizer.epsilon.step is 'epoch': pass total_steps= and steps_per_epoch= "
                                      "to attach() so that the schedule knows how many epochs training lasts")
        else:
            self._schedule_problem = (f"the gdp regularizer anneals epsilon from {cfg.start:g} to {cfg.end:g} over "
                                      "training: pass total_steps= (training iterations) to attach() so that the "
                                      "schedule knows its length")
        if length is not None:
            self.epsilon_schedule = EpsilonRamp(cfg, length)
            self._schedule_problem = None

    # -- the model ------------------------------------------------------------------------------
    @property
    def bank(self) -> GateBank:
        """The gate parameters (a submodule of :attr:`module`)."""
        return getattr(self.module, self._bank_name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def group_gates(self) -> dict[int, Tensor]:
        """``{gid: gate vector}`` of every gated group (differentiable)."""
        return self.bank.group_gates()

    def block_gates(self) -> dict[int, Tensor]:
        """``{bid: scalar gate}`` of every gated block (differentiable)."""
        return self.bank.block_gates()

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gates' ``theta`` (e.g. for an optimizer group without weight decay)."""
        return list(self.bank.parameters())

    # -- training -------------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        """The current regularization strength."""
        return self.controller.lam if self.controller is not None else self._lambda

    @property
    def epsilon(self) -> float:
        return float(self.bank.epsilon)

    def gate_param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups for the gates, one per gate vector, with the learning
        rate divided by the share of the target metric one of its units costs.

        With plain SGD (no momentum, no weight decay, as here) a gate then moves by
        ``lr * (lambda + dL/dg / c) * dg/dtheta``: a unit is removed when its task gradient per
        unit of cost is below the price ``lambda`` that the budget controller sets, whatever
        the unit's size (a channel, a head, a whole block)."""
        metric_index = 0 if self.metric == "flops" else 1
        total = self.cost_model.total.metric(self.metric) or 1.0
        if self.bank.kind != "smoothed_l0":
            # clamped gates move one for one with theta; the smoothed L0 starts with
            # dg/dtheta = 2*theta*eps/(theta^2+eps)^2 ~ 0.02 (g0 = 0.99, theta0 = 1): the same
            # lr must not move clamped gates 50x faster
            lr *= 0.02
        unit = self.cost_model.unit_costs()
        base = self.cost_model.gate_vector({}, torch.float64)
        full = float(self.cost_model.evaluate(base)[metric_index])
        groups = []

        def group(param: nn.Parameter, share: float) -> dict[str, Any]:
            scale = 1.0 / share if share > 0 else 1.0
            return {"params": [param], "lr": lr * scale, "momentum": 0.0, "weight_decay": 0.0,
                    "nesterov": False, "dampening": 0.0}

        for key, param in self.bank.group_theta.items():
            groups.append(group(param, unit[int(key)].metric(self.metric) / total))
        for key, param in self.bank.block_theta.items():
            zero = {int(key): torch.zeros((), dtype=torch.float64)}
            groups.append(group(param, (full - float(self.cost_model.evaluate(base, zero)[metric_index])) / total))
        return groups

    def penalty(self) -> Tensor:
        """``lambda * regularizer(gates)``: add it to the task loss (outside autocast is fine)."""
        groups, blocks = self.bank.split(self.bank.flat())
        return self.lam * self.regularizer(groups, blocks)

    def fractions(self) -> tuple[float, float]:
        """(hard, soft) remaining fraction of the target metric: gates ``<= threshold`` removed,
        and the cost written from the gates as they are."""
        with torch.no_grad():
            groups, blocks = self.bank.split(self.bank.flat())
        hard = hard_fraction(self.cost_model, groups, blocks, threshold=self.threshold, metric=self.metric)
        return hard, soft_fraction(self.cost_model, groups, blocks, metric=self.metric)

    def step(self, global_step: Optional[int] = None) -> None:
        """Call after every optimizer step: counts the iteration (or sets it to ``global_step``),
        latches gates that reached exactly 0, anneals epsilon and updates the lambda controller
        where they move per iteration, and runs :meth:`end_epoch` at epoch ends when
        ``steps_per_epoch`` is known."""
        bank = self.bank
        with torch.no_grad():
            bank.step.fill_(int(global_step) if global_step is not None else int(bank.step) + 1)
        count = int(bank.step)
        bank.latch_zeros(self.threshold)
        self._advance("iteration", count)
        if self.steps_per_epoch is not None and count % self.steps_per_epoch == 0:
            self.end_epoch()

    def end_epoch(self) -> None:
        """Call at the end of every epoch (done by :meth:`step` when ``steps_per_epoch`` is
        known): moves the schedules that step per epoch."""
        bank = self.bank
        with torch.no_grad():
            bank.epoch.add_(1)
        bank.latch_zeros(self.threshold)
        self._advance("epoch", int(bank.epoch))

    def _advance(self, unit: str, count: int) -> None:
        if self.bank.kind == "smoothed_l0" and self.epsilon_per == unit:
            if self.epsilon_schedule is None:
                raise GateError(self._schedule_problem or "no epsilon schedule")
            self.bank.set_epsilon(self.epsilon_schedule.value(count))
        if self.controller is not None and self.controller_per == unit:
            hard, soft = self.fractions()
            self.controller.update(count, hard, soft)

    # -- reporting and finalizing ---------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Polarization and budget state, flat: gate fractions ``zero`` / ``near_zero`` (0, 0.01)
        / ``middle`` [0.01, 0.99) / ``near_one`` over free unit gates (and ``block_*`` over block
        gates), ``hard_fraction``, ``soft_fraction``, ``target``, ``metric``, ``lambda``,
        ``epsilon``, ``step``, ``epoch``, ``latched``."""
        bank = self.bank
        with torch.no_grad():
            flat = bank.flat()
        free = ~bank.frozen
        units = flat[: bank.num_units][free[: bank.num_units]]
        blocks = flat[bank.num_units: bank.one_position]
        hard, soft = self.fractions()
        out: dict[str, Any] = {"gated_groups": len(bank.group_ids), "gated_units": int(units.numel()),
                               "gated_blocks": len(bank.block_ids)}
        out.update(polarization_stats(units))
        if blocks.numel():
            out.update({f"block_{k}": v for k, v in polarization_stats(blocks).items()})
        out.update(hard_fraction=hard, soft_fraction=soft, target=self.policy.target.fraction, metric=self.metric,
                   threshold=self.threshold, regularizer=self.policy.regularizer.name)
        out["lambda"] = self.lam
        out.update(epsilon=self.epsilon if self.bank.kind == "smoothed_l0" else None, step=int(bank.step),
                   epoch=int(bank.epoch), latched=int(bank.dead.sum()))
        return out

    # -- checkpointing --------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"lambda": self._lambda,
                "controller": self.controller.state_dict() if self.controller is not None else None}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or "lambda" not in state:
            raise GateError("GatedModel state: extra state lacks 'lambda'")
        self._lambda = float(state["lambda"])
        ctrl = state.get("controller")
        if (ctrl is None) != (self.controller is None):
            raise GateError("GatedModel state: the checkpoint's lambda controller does not match this policy's "
                            f"(checkpoint {'has none' if ctrl is None else 'has one'})")
        if ctrl is not None:
            self.controller.load_state_dict(ctrl)


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _positive_or_none(value: Optional[int], name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GateError(f"{name} must be a positive int, got {value!r}")
    return value
