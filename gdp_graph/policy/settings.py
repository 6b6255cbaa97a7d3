"""The typed settings of a policy: frozen dataclasses whose class attributes are the single
source of every default value (documented by the format in :mod:`gdp_graph.policy.schema`,
which re-exports every name here), and the vocabularies their keys take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gdp_graph.vocabulary import anneal

VERSION = 1
#: what a proportional lambda controller's look-ahead follows (see gdp_graph.gates.budget)
LEADS = ("soft", "travel")
#: where the gates' theta starts (see gdp_graph.gates.init): all equal, or ranked by an importance
INITS = ("uniform", "magnitude", "activation", "taylor")
#: how a ranked init compares units of different groups: ``group`` divides each group's scores by
#: their mean first, ``global`` ranks the raw scores (gdp_graph.gates.init)
INIT_RANKS = ("group", "global")
#: the regularizer keys that only ``name: gdp`` takes (a policy switched to a baseline drops them)
GDP_ONLY_KEYS = ("epsilon", "init", "init_spread", "init_rank", "price")
CONTROLLERS = ("proportional", "lagrangian", "constant")
GROUP_LEVELS = ("channel", "none")
BLOCK_LEVELS = ("block", "inner", "none")
UNITS = ("channel", "head", "norm-group", "conv-group", "channel-block")
COUPLINGS = ("residual", "concat", "split", "depthwise", "grouped", "attention", "multiply",
             "flatten", "shuffle", "norm")


@dataclass(frozen=True)
class Target:
    """How much of the model to keep."""

    metric: str = "flops"
    fraction: float = 0.5
    tolerance: float = 0.02


@dataclass(frozen=True)
class LambdaController:
    """How the regularization strength is steered towards the target.

    ``proportional``: after every ``step``, ``lambda <- clamp(lambda * exp(gain * e * r), min, max)``
    where ``e`` is the (saturated) gap between the fraction of the original metric that the
    hard gate count keeps and ``target.fraction`` (zero inside the tolerance band) and ``r`` the
    share of that gap not already closing on its own (see :mod:`gdp_graph.gates.budget`).
    ``lagrangian``: lambda is the price of the constraint "soft cost = a path falling to the
    target by the deadline", with two multipliers trained by gradient ascent (see
    :mod:`gdp_graph.gates.lagrangian`), within [``min``, ``max``]; ``lead`` does not apply.
    ``constant``: lambda never changes (``gain``/``min``/``max``/``step`` are not allowed).
    """

    kind: str = "proportional"
    gain: float = 0.05
    min: float = 1.0e-3
    max: float = 10.0
    step: str = "iteration"
    lead: str = "soft"
    deadline: bool = True


@dataclass(frozen=True)
class EpsilonSchedule:
    """The GDP smoothing constant, annealed from ``start`` down to ``end`` (``start > end > 0``)."""

    start: float = 1.0e-2
    end: float = 1.0e-8
    schedule: str = "cosine"
    step: str = "iteration"
    max_travel: Optional[float] = None  #: see gdp_graph.gates.schedule.fit_to_window
    end_at: float = 1.0  #: share of the gates' window (the steps before fix_at) when end is reached

    def value(self, progress: float) -> float:
        """Epsilon after a fraction ``progress`` in [0, 1] of the annealing."""
        return anneal(self.start, self.end, progress, self.schedule)


@dataclass(frozen=True)
class Regularizer:
    """The sparsity regularizer on the gates. ``epsilon`` is set only for ``gdp`` and ``t``
    only for ``polarization``."""

    name: str = "gdp"
    lambda_: float = 1.0
    lambda_controller: LambdaController = field(default_factory=LambdaController)
    epsilon: Optional[EpsilonSchedule] = field(default_factory=EpsilonSchedule)
    t: Optional[float] = None
    threshold: float = 1.0e-6
    fix_at: float = 0.3
    reopen: bool = False
    init: str = "magnitude"
    init_spread: float = 0.9
    init_rank: str = "group"
    price: str = "cost"
    hold_budget: bool = True
    lr_by_cost: bool = False


@dataclass(frozen=True)
class Defaults:
    """Settings of every group and block that no rule overrides."""

    level: str = "channel"
    block_level: str = "none"
    min_channels: int = 1
    round_to: int = 1
    max_fraction: float = 0.9
    allow_inexact: bool = False
    uniform: bool = False


@dataclass(frozen=True)
class TrainingSchedule:
    """Epochs and learning rates of ``gdp-graph prune`` (its flags override them; a key left
    unset falls back to the TASK's default, then to the built-in one)."""

    epochs: Optional[int] = None
    finetune_epochs: Optional[int] = None
    lr: Optional[float] = None
    finetune_lr: Optional[float] = None
    gate_lr: Optional[float] = None
    optimizer: Optional[str] = None
    weight_decay: Optional[float] = None
    steps: Optional[int] = None  #: a step budget instead of epochs (gated + recovery steps in all)


@dataclass(frozen=True)
class Distill:
    """Logit distillation from the frozen original during training (``gdp-graph prune
    --distill``): loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * task loss."""

    temperature: float = 2.0
    alpha: float = 0.5


OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float32", "float16", "bfloat16")
MEMORY_FORMATS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class LatencySettings:
    """Where and how latency is measured for ``target.metric: latency`` (see
    :mod:`gdp_graph.latency`)."""

    device: str = "cpu"
    batch: int = 1
    threads: int = 1
    dtype: str = "float32"
    memory_format: str = "contiguous"
    cache: Optional[str] = None  #: folder of the cached tables (default ~/.cache/gdp-graph/latency)
    points: int = 8  #: kept widths timed, from all units down to 1/points of each group
    round_to: int = 1  #: kept channel counts of the timed widths are multiples of this
    #: after the table's plan, up to this many rounds of building the pruned model, timing it against the
    #: original and correcting the fraction the planner aims at (0: trust the table)
    corrections: int = 2
