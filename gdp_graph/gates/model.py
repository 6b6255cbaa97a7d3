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

The model only wires its collaborators: the gates and their numbering
(:class:`~gdp_graph.gates.bank.GateBank`), the phase's timetable, cost model and lambda
controller (:mod:`gdp_graph.gates.phase`), the plans read from the gates
(:mod:`gdp_graph.gates.cut`) and the regularizer.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Optional

import torch
import torch.fx as fx
from torch import Tensor, nn

from gdp_graph.gates.absorb import reopen_into_weights
from gdp_graph.gates.bank import GateBank, GateError
from gdp_graph.gates.budget import BudgetController, soft_fraction
from gdp_graph.gates.cut import budget_plan, budget_plan_at, plan_from_gates, protected_mask
from gdp_graph.gates.hold import budget_keep_mask
from gdp_graph.gates.hooks import ClassForward, gated_module
from gdp_graph.gates.lagrangian import LagrangianController
from gdp_graph.gates.phase import GatedPhase, cost_model_for, lambda_controller
from gdp_graph.gates.regularizers import make_regularizer, unit_cost_scales
from gdp_graph.gates.schedule import EpsilonRamp
from gdp_graph.gates.selection import plan_fraction
from gdp_graph.graph.analysis import Analysis
from gdp_graph.policy import Resolution
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.vocabulary import DEFAULT_T

__all__ = ["DEFAULT_GATE_LR", "GateInitWarning", "GatedModel", "GateError", "polarization_stats"]

#: the gates' learning rate (Adam, see :meth:`GatedModel.gate_optimizer`)
DEFAULT_GATE_LR = 0.02


class GateInitWarning(UserWarning):
    """The policy's gate start was not applied before training (see ``GatedModel.init_pending``)."""


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
        gate_opt = gated.gate_optimizer()               # Adam on theta, DEFAULT_GATE_LR
        loss = task_loss(gated(x), y) + gated.penalty()
        loss.backward(); optimizer.step(); gate_opt.step(); gated.step()
        pruned, report = finalize(gated)

    The gated phase (``total_steps`` iterations) has two parts. Until ``fix_at * total_steps``
    (policy ``regularizer.fix_at``) the gates train: epsilon anneals from its start to its end,
    lambda is steered so that the soft cost approaches the target, and after every step
    :meth:`step` projects ``theta`` into its domain (no gate jumps across 0: the gate function is
    symmetric and ``theta`` is clamped to ``[0, theta_max]``; the units a group's limits force
    to stay keep a gate >= 0.9). At ``fix_at`` the gates are *fixed* (:meth:`fix_gates`): with a
    steered lambda the lowest gates are cut until the cost is as close to the target as unit
    sizes allow (:func:`gates.cut.budget_plan`; with a constant lambda, gates <= 0.5 are cut),
    the cut gates become exactly 0, the gates keep their values whatever the optimizer does to
    ``theta``, and the penalty is 0.
    The rest of the phase trains the weights with the gates fixed, so the gated model is the
    finalized model.

    Args:
        total_steps: training iterations of the gated phase; with an epoch schedule
            (``step: epoch``), ``total_steps // steps_per_epoch`` epochs.
        steps_per_epoch: lets :meth:`step` notice epoch ends (else call :meth:`end_epoch`).
        init_gate: the value every smoothed-L0 gate starts at.
        gate_lr: the gates' learning rate (:meth:`gate_optimizer`'s default; ``epsilon.max_travel``
            fits the start of epsilon to it).

    ``state_dict()`` holds the model's weights, every ``theta``, epsilon, the step/epoch
    counters, the dead gates, whether the gates are fixed and (as extra state) lambda and the
    controller: loading it into a fresh model built the same way resumes exactly.
    """

    def __init__(self, analysis: Analysis, resolution: Resolution, *, total_steps: Optional[int] = None,
                 steps_per_epoch: Optional[int] = None, init_gate: float = 0.99,
                 gate_lr: float = DEFAULT_GATE_LR):
        super().__init__()
        policy = resolution.policy
        reg = policy.regularizer
        self.analysis, self.resolution, self.policy = analysis, resolution, policy
        self.metric, self.threshold, self.gate_lr = policy.target.metric, float(reg.threshold), float(gate_lr)
        self.phase = GatedPhase.of(policy, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                   init_gate=init_gate, gate_lr=self.gate_lr)
        bank = GateBank.for_analysis(analysis, resolution.gated_groups(), resolution.gated_blocks(),
                                     kind=self.phase.kind, epsilon=self.phase.epsilon_start, init_gate=init_gate)
        # the user's class with gate hooks where the sites allow (any input size), else the graph
        self.module, self.hooks_reason = gated_module(analysis, bank, bank.sites, "gdp_gates")
        if not isinstance(self.module, fx.GraphModule):
            self.forward = ClassForward(self)  # the class's signature, for Trainer's column filter
        self._bank_name = next(n for n, m in self.module.named_children() if m is bank)
        self.cost_model = cost_model_for(analysis, policy)
        self.regularizer = make_regularizer(reg.name, self.cost_model, metric=self.metric,
                                            t=reg.t if reg.t is not None else DEFAULT_T, price=reg.price)
        self._lambda = float(reg.lambda_)
        self.controller: Optional[BudgetController | LagrangianController] = lambda_controller(policy, self.phase)
        self.fix_report: dict[str, Any] = {}
        #: the policy's data-scored ``regularizer.init`` (``activation``, ``taylor``) until
        #: :func:`gdp_graph.importance.init_gates` applies it; the first :meth:`step` warns if not
        self.init_pending: Optional[str] = None
        #: ``plan -> (model, Measured)``: with a latency target and ``latency.corrections`` > 0, the
        #: cut at ``fix_at`` is corrected by measured latency (see :meth:`fix_gates`); set by the
        #: caller (``gdp_graph.latency.cut_measure``), None: the table's cut
        self.cut_measure: Optional[Callable[[PruningPlan], tuple[nn.Module, Any]]] = None
        self.train()

    @property
    def fix_step(self) -> Optional[int]:
        """The step (or epoch) at which the gates are cut (see :class:`GatedPhase`)."""
        return self.phase.fix_step

    @property
    def epsilon_schedule(self) -> Optional[EpsilonRamp]:
        return self.phase.epsilon_schedule

    # -- the model ------------------------------------------------------------------------------
    @property
    def fixed(self) -> Tensor:
        """True once the gates are fixed (see :meth:`fix_gates`)."""
        return self.bank.is_fixed

    @property
    def bank(self) -> GateBank:
        """The gate parameters (a submodule of :attr:`module`)."""
        return getattr(self.module, self._bank_name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """What the user's class has (``config``, ``generate``, ``gradient_checkpointing_enable``)
        when the gated module is that class with gate hooks (:mod:`gdp_graph.gates.hooks`)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = self._modules.get("module")
            if module is None or isinstance(module, fx.GraphModule) or name.startswith("_"):
                raise
            return getattr(module, name)

    def group_gates(self) -> dict[int, Tensor]:
        """``{gid: gate vector}`` of every gated group (differentiable)."""
        return self.bank.group_gates()

    def block_gates(self) -> dict[int, Tensor]:
        """``{bid: scalar gate}`` of every gated block (differentiable)."""
        return self.bank.block_gates()

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gates' ``theta`` (e.g. for an optimizer group without weight decay)."""
        return list(self.bank.parameters())

    def weight_parameters(self) -> list[nn.Parameter]:
        """The model's trainable parameters other than the gates (what the task optimizer trains)."""
        gates = {id(p) for p in self.gate_parameters()}
        return [p for p in self.parameters() if id(p) not in gates and p.requires_grad]

    def gate_optimizer(self, lr: Optional[float] = None) -> torch.optim.Optimizer:
        """The gates' optimizer, by the one convention of this library: Adam on every ``theta``
        with one learning rate, no weight decay. Adam moves each ``theta`` by about ``lr`` per
        step whatever the scale of its gradient, so a gate (``theta`` starts near 1) needs at
        least ``1 / lr`` steps to reach 0 and cannot be thrown across it by one noisy step;
        whether it goes down is decided by the sign of ``dTask/dg + lambda * dCost/dg``, i.e.
        by the price ``lambda`` of each unit's cost (the cost weighting lives in the ``gdp``
        regularizer). ``regularizer.lr_by_cost`` scales each gate tensor's rate by its cost share
        (:func:`~gdp_graph.gates.regularizers.unit_cost_scales`). ``lr``: the model's ``gate_lr``
        by default."""
        lr = self.gate_lr if lr is None else lr
        if not self.policy.regularizer.lr_by_cost:
            return torch.optim.Adam(self.gate_parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
        bank = self.bank  # regularizer.lr_by_cost: one learning rate per gate tensor, by its cost share
        sizes = {g: len(bank.group_theta[str(g)]) for g in bank.group_ids}
        frozen, _ = bank.split(bank.frozen)
        group_scales, block_scales = unit_cost_scales(self.regularizer, sizes, frozen, list(bank.block_ids))
        params = [{"params": [bank.group_theta[str(g)]], "lr": lr * group_scales[g]} for g in bank.group_ids]
        params += [{"params": [bank.block_theta[str(b)]], "lr": lr * block_scales[b]} for b in bank.block_ids]
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)

    # -- training -------------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        """The current regularization strength."""
        return self.controller.lam if self.controller is not None else self._lambda

    @property
    def epsilon(self) -> float:
        return float(self.bank.epsilon)

    def penalty(self) -> Tensor:
        """``lambda * regularizer(gates)``: add it to the task loss (0 once the gates are fixed)."""
        flat = self.bank.flat()
        if bool(self.fixed):  # 0, still connected to theta (a caller may backward() it)
            return 0.0 * flat.sum()
        groups, blocks = self.bank.split(flat)
        return self.lam * self.regularizer(groups, blocks)

    def current_plan(self, threshold: float = 0.5):
        """The plan that removes the gates ``<= threshold`` within every group's limits."""
        return plan_from_gates(self.analysis, self.bank, self.resolution, threshold)

    def fractions(self) -> tuple[float, float]:
        """(hard, soft) remaining fraction of the target metric: the plan removing the gates
        ``<= 0.5`` within the limits (before the gates are fixed; the dead gates after), and the
        cost written from the gates as they are."""
        threshold = self.threshold if bool(self.fixed) else 0.5
        hard = plan_fraction(self.cost_model, self.current_plan(threshold), self.metric)
        groups, blocks = self.bank.values()
        return hard, soft_fraction(self.cost_model, groups, blocks, metric=self.metric)

    def travel_fraction(self) -> float:
        """The cost written from how far each gate's ``theta`` still is from 0, as a share of
        its start: ``min(|theta| / theta_start, 1)`` (frozen units 1, dead ones 0).

        Adam moves ``theta`` by about its learning rate per step from the first step on, but a
        smoothed-L0 gate's value only moves once ``theta`` nears ``sqrt(epsilon)``; this
        fraction falls as soon as gates are on their way down, which the soft cost does only
        after that dead time (``lambda_controller.lead: travel`` steers the look-ahead on it).
        """
        groups, blocks = self.bank.split(self.bank.travel())
        return soft_fraction(self.cost_model, groups, blocks, metric=self.metric)

    def protected(self) -> Tensor:
        """Flat mask of the units each group's limits force to stay (see :func:`cut.protected_mask`)."""
        return protected_mask(self.analysis, self.resolution, self.bank)

    def step(self, global_step: Optional[int] = None) -> None:
        """Call after every optimizer step: counts the iteration (or sets it to ``global_step``),
        moves the schedules that step per iteration, projects ``theta`` (see the class
        docstring), fixes the gates at ``fix_at``, and runs :meth:`end_epoch` at epoch ends when
        ``steps_per_epoch`` is known."""
        bank = self.bank
        with torch.no_grad():
            bank.step.fill_(int(global_step) if global_step is not None else int(bank.step) + 1)
        count = int(bank.step)
        if self.init_pending is not None:
            warnings.warn(f"regularizer.init: {self.init_pending} was never applied, so the gates started at "
                          "one value as with init: uniform; it scores units on data: call "
                          "gdp_graph.importance.init_gates(gated, batches) after attach()", GateInitWarning,
                          stacklevel=2)
            self.init_pending = None
        self._advance("iteration", count)
        per_epoch = self.phase.steps_per_epoch
        if per_epoch is not None and count % per_epoch == 0:
            self.end_epoch()

    def end_epoch(self) -> None:
        """Call at the end of every epoch (done by :meth:`step` when ``steps_per_epoch`` is
        known): moves the schedules that step per epoch."""
        bank = self.bank
        with torch.no_grad():
            bank.epoch.add_(1)
        self._advance("epoch", int(bank.epoch))

    def _advance(self, unit: str, count: int) -> None:
        """Epsilon, projection, lambda and the fixing of the gates, in that order: a gate is
        projected for the epsilon it will be used with, and cut with it."""
        if bool(self.fixed):
            return
        scheduled = unit == self.phase.unit
        hold = self.policy.regularizer.hold_budget and self.controller is not None  # steered lambda only
        # regularizer.hold_budget: what a cut to the target would keep now (see gates.hold). One
        # ranking serves both uses below: scaling the other units' theta with sqrt(epsilon) moves
        # them only further down the ranking, so the cut keeps the same set afterwards
        held = budget_keep_mask(self) if hold and (unit == "iteration" or scheduled) else None
        if self.bank.kind == "smoothed_l0" and scheduled:
            if self.phase.epsilon_schedule is None:
                raise GateError("the gdp regularizer anneals epsilon over the gated phase: pass total_steps= "
                                "(training iterations) to attach() so that the schedule knows its length")
            # what the cut would not keep keeps its gate value as epsilon shrinks
            self.bank.set_epsilon(self.phase.epsilon_schedule.value(count), None if held is None else ~held)
        if unit == "iteration" or scheduled:
            # and what it would keep stays at >= 0.99
            self.bank.project(self.protected(), held)
        ctrl = self.policy.regularizer.lambda_controller
        if self.controller is not None and ctrl.step == unit:
            hard, soft = self.fractions()
            lead = self.travel_fraction() if ctrl.lead == "travel" else None
            # with hold_budget the gap is the hard fraction's (what the cut would keep: held units
            # are polarized, the others are not pulled open by epsilon), the look-ahead the soft one's
            self.controller.update(count, hard if hold else soft, soft, lead=lead)
        if scheduled and self.phase.fix_step is not None and count >= self.phase.fix_step:
            self.fix_gates()

    def fix_gates(self) -> dict[str, Any]:
        """End the gates' training now (done by :meth:`step` at ``fix_at``): cut the gates to the
        budget (steered lambda) or at 0.5 (constant lambda), set the cut ones to exactly 0 and fix
        every gate's value; returns what was done (also kept in :attr:`fix_report`)."""
        bank = self.bank
        hard_before, soft_before = self.fractions()
        loop = None
        if self.controller is not None:  # ranked by theta: at a tiny epsilon every surviving gate is 1.0
            plan, loop = self._cut_plan(bank.theta().detach().abs())
        else:
            plan = self.current_plan(0.5)
        cut = bank.removed_by(plan, self.resolution.inner_blocks)
        bank.kill(cut)
        # reopen: a kept gate stuck near its floor counts in the budget but carries ~nothing;
        # it goes to 1 and its value into the weights it scales (exact)
        low = reopen_into_weights(self.analysis, bank, self.module) if self.policy.regularizer.reopen else bank.fix()
        hard, soft = self.fractions()
        self.fix_report = {"step": int(bank.step), "hard_before": hard_before, "soft_before": soft_before,
                           "fraction": hard, "cut_units": int(cut.sum()), "kept_low": low,
                           "reopened": low if self.policy.regularizer.reopen else 0,
                           **({"latency_loop": loop} if loop is not None else {})}
        return self.fix_report

    def _cut_plan(self, theta: Tensor) -> tuple[PruningPlan, Optional[dict[str, Any]]]:
        """The cut to the budget ranked by ``theta``; to a latency target with :attr:`cut_measure`
        set and ``latency.corrections`` > 0, the plan of :func:`~gdp_graph.latency.loop.close_loop`:
        the cut is built and timed, and the fraction aimed at corrected by what was measured
        (its rounds are returned for the fix report)."""
        corrections = self.policy.latency.corrections
        if self.metric != "latency" or self.cut_measure is None or corrections < 1:
            return budget_plan(self, theta), None
        from gdp_graph.latency.loop import close_loop
        loop = close_loop(self.policy.target.fraction, lambda aim: budget_plan_at(self, theta, aim), self.cut_measure,
                          corrections=corrections, tolerance=self.policy.target.tolerance)
        return loop.plan, loop.to_dict()

    # -- reporting ------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Polarization and budget state, flat: gate fractions ``zero`` / ``near_zero`` (0, 0.01)
        / ``middle`` [0.01, 0.99) / ``near_one`` over free unit gates (and ``block_*`` over block
        gates), ``hard_fraction``, ``soft_fraction``, ``target``, ``metric``, ``lambda``,
        ``epsilon``, ``step``, ``epoch``, ``dead``, ``fixed``."""
        bank = self.bank
        gates, block_gates = bank.values()
        frozen, _ = bank.split(bank.frozen)
        units = torch.cat([g[~frozen[gid]] for gid, g in gates.items()]) if gates else torch.zeros(0)
        blocks = torch.stack(list(block_gates.values())) if block_gates else torch.zeros(0)
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
                   epoch=int(bank.epoch), dead=int(bank.dead.sum()), fixed=bool(self.fixed))
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

