"""The policy format, declared once: which keys exist, their types, ranges, defaults and
documentation. The generic machinery that checks a document against it lives in
:mod:`gdp_graph.policy.yamlcheck`.

The declaration, :data:`POLICY_SPEC`, drives

* validation (``POLICY_SPEC.check``): every problem becomes a
  :class:`~gdp_graph.policy.yamlcheck.Diagnostic` that names ``file:line:col`` and, where it helps, the
  allowed values and a "did you mean" suggestion;
* the JSON Schema shipped for editors (:func:`json_schema`, written to
  ``policies/schema.json`` by ``python -m gdp_graph.policy.schema``);
* the defaults of the typed settings dataclasses (:class:`Target`, :class:`Regularizer`, ...,
  declared in :mod:`gdp_graph.policy.settings` and re-exported here), whose class attributes
  are the single source of every default value.

Cross-field rules (epsilon ``start > end``, regularizer-specific keys, contradictory rules) are
checked by :mod:`gdp_graph.policy.build`, which builds the final
:class:`~gdp_graph.policy.Policy`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gdp_graph.policy.settings import (  # noqa: F401 - the typed settings, re-exported here
    BLOCK_LEVELS, CONTROLLERS, COUPLINGS, DTYPES, GDP_ONLY_KEYS, GROUP_LEVELS, INIT_RANKS, INITS, LEADS,
    MEMORY_FORMATS, OPTIMIZERS, UNITS, VERSION, Defaults, Distill, EpsilonSchedule, LambdaController, LatencySettings, Regularizer, Target,
    TrainingSchedule)
from gdp_graph.policy.shipped import POLICY_DIR
from gdp_graph.vocabulary import DEFAULT_T, METRICS, PRICES, REGULARIZERS, SCHEDULES, STEPS
from gdp_graph.policy.yamlcheck import Bool, Enum, Field, Int, Number, OneOrMany, Seq, Str, Struct, Variant


# --------------------------------------------------------------------------------------------
# The policy format
# --------------------------------------------------------------------------------------------

_LEVEL_DOC = "channel: gate the group's units; none: no gates (the group is kept whole)."
_BLOCK_HINT = "'block' is only valid in block rules (rules with 'blocks:')"
_CHANNEL_HINT = "'channel' is only valid for groups (defaults.level or rules with 'match:')"
_INNER_HINT = "'inner' is only valid for blocks (defaults.block_level or rules with 'blocks:')"
_BLOCK_LEVEL_DOC = ("block: one gate on the whole branch (counted in the budget); inner: no "
                    "block gate, the block is removed when every channel group inside it loses "
                    "all its units; none: the block is never removed whole.")

MIN_CHANNELS = Field(Int(minimum=0), "Units (channels, heads, ...) always kept in a group.",
                     Defaults.min_channels)
ROUND_TO = Field(Int(minimum=1), "The kept unit count is rounded to a multiple of this "
                 "(unless the group is kept whole).", Defaults.round_to)
MAX_FRACTION = Field(Number(minimum=0, maximum=1), "Largest fraction of a group's units that "
                     "may be removed.", Defaults.max_fraction)
ALLOW_INEXACT = Field(Bool(), "Also gate groups whose removal is inexact (LayerNorm, softmax or "
                      "a mean over the channels).", Defaults.allow_inexact)
UNIFORM = Field(Bool(), "The gated groups that take this setting from the same rule (or from "
                "defaults) and have the same unit kind keep the same number of units (each "
                "chooses which by its own gates or scores); they must all have one size.",
                Defaults.uniform)
#: The group settings that both ``defaults`` and group rules set.
GROUP_LIMITS = {"min_channels": MIN_CHANNELS, "round_to": ROUND_TO,
                "max_fraction": MAX_FRACTION, "allow_inexact": ALLOW_INEXACT, "uniform": UNIFORM}
#: The same in a rule, documented without a default: a key a rule leaves out is not changed.
_RULE_LIMITS = {key: Field(f.spec, f.doc) for key, f in GROUP_LIMITS.items()}

TARGET_SPEC = Struct("target", {
    "metric": Field(Enum(METRICS), "What the budget counts.", Target.metric),
    "fraction": Field(Number(minimum=0, maximum=1, exclusive_minimum=True),
                      "Fraction of the ORIGINAL metric to keep.", Target.fraction),
    "tolerance": Field(Number(minimum=0, maximum=1), "Accepted overshoot above fraction "
                       "(same units).", Target.tolerance),
}, doc="How much of the model to keep.", nullable=True)

CONTROLLER_SPEC = Struct("lambda controller", {
    "kind": Field(Enum(CONTROLLERS), "proportional: lambda <- clamp(lambda * exp(gain * e * r), min, "
                  "max) with e the gap of the kept metric to the target (0 inside the tolerance "
                  "band) and r the share of it not already closing; "
                  "lagrangian: lambda = lambda1 + 2 lambda2 gap, the price of the constraint 'soft "
                  "cost = a path falling to the target by the deadline' (gap = soft - path), both "
                  "multipliers raised by gradient ascent on the gap (lead does not apply); "
                  "constant: lambda is fixed.", LambdaController.kind),
    "gain": Field(Number(minimum=0, exclusive_minimum=True), "how fast lambda reacts (proportional: "
                  "per update in log space; lagrangian: the ascent rate's lower bound).", LambdaController.gain),
    "min": Field(Number(minimum=0), "lower bound of lambda.",
                 LambdaController.min),
    "max": Field(Number(minimum=0, exclusive_minimum=True), "upper bound of lambda (lagrangian: "
                 "of its absolute value).", LambdaController.max),
    "step": Field(Enum(STEPS), "how often lambda is updated.",
                  LambdaController.step),
    "lead": Field(Enum(LEADS), "proportional only: what the look-ahead against wind-up follows. "
                  "soft: the soft cost; travel: the cost written from each gate's theta as a "
                  "share of its start (moves from the first step, while a gate's value only moves "
                  "once theta nears sqrt(epsilon)).", LambdaController.lead),
    "deadline": Field(Bool(), "aim at the step where epsilon reaches its end "
                      "(epsilon.end_at of the steps before fix_at): the look-ahead reaches no further, "
                      "and gain is raised to ln(10) / those steps when larger, so that lambda can move a "
                      "factor 10 within a short window (lagrangian: the path reaches the target at 75% "
                      "of those steps).", LambdaController.deadline),
}, doc="How lambda is steered towards the target.", nullable=True)

EPSILON_SPEC = Struct("epsilon schedule", {
    "start": Field(Number(minimum=0, exclusive_minimum=True), "Initial epsilon (> end).",
                   EpsilonSchedule.start),
    "end": Field(Number(minimum=0, exclusive_minimum=True), "Final epsilon (> 0).",
                 EpsilonSchedule.end),
    "schedule": Field(Enum(SCHEDULES), "Annealing curve from start to end.",
                      EpsilonSchedule.schedule),
    "step": Field(Enum(STEPS), "Whether epsilon moves every iteration or every epoch.",
                  EpsilonSchedule.step),
    "max_travel": Field(Number(minimum=0, maximum=1, exclusive_minimum=True), "At most this share "
                        "of the gates' training (the steps before fix_at) may pass before a gate "
                        "falling at full speed (Adam: about gate_lr per step) reaches 0 from its "
                        "start; a shorter gated phase lowers start (theta starts lower). Absent: "
                        "start as given."),
    "end_at": Field(Number(minimum=0, maximum=1, exclusive_minimum=True), "Share of the gates' "
                    "training (the steps before fix_at) at which epsilon reaches end; it stays there "
                    "until the cut. Below 1 the gates polarize before they are cut and lambda steers "
                    "the polarized gates to the target in the remaining steps, so the cut confirms "
                    "what the gates decided.", EpsilonSchedule.end_at),
}, doc="gdp only: the smoothing constant of the gates, annealed from start down to end.",
    nullable=True)

REGULARIZER_SPEC = Struct("regularizer", {
    "name": Field(Enum(REGULARIZERS), "gdp: smoothed-L0 gates g^2/(g^2+epsilon) (GDP); "
                  "polarization: t*|g|_1 - |g - mean g|_1; l1: |g|_1.", Regularizer.name),
    "lambda": Field(Number(minimum=0), "Initial regularization strength (> 0 with a "
                    "proportional controller).", Regularizer.lambda_, attr="lambda_"),
    "lambda_controller": Field(CONTROLLER_SPEC, "How lambda is steered towards the target."),
    "epsilon": Field(EPSILON_SPEC, "gdp only: epsilon schedule."),
    "t": Field(Number(minimum=0, exclusive_minimum=True), "polarization only: t in "
               "t*|g|_1 - |g - mean g|_1 (default 1.2).", DEFAULT_T),
    "threshold": Field(Number(minimum=0, maximum=1, exclusive_minimum=True,
                              exclusive_maximum=True),
                       "A gate below this counts as zero (hard count).", Regularizer.threshold),
    "fix_at": Field(Number(minimum=0, maximum=1, exclusive_minimum=True),
                    "Fraction of the gated phase at which the gates are fixed: epsilon has reached "
                    "its end, the units are cut to the budget (lowest gates first, limits kept), "
                    "and the rest of the phase trains the weights with the gates fixed.",
                    Regularizer.fix_at),
    "reopen": Field(Bool(), "At fix_at, fix every kept gate at 1 and move its value then into the "
                    "weights it scales (exact: nothing jumps): a kept gate that had fallen to its "
                    "floor (0.0099) would otherwise hold its unit there, counted in the budget but "
                    "carrying almost nothing. A unit whose gate no weight can take keeps its value.",
                    Regularizer.reopen),
    "init": Field(Enum(INITS), "gdp only: where the gates start. uniform: every gate at 0.99; "
                  "magnitude / activation / taylor: ranked by that one-shot importance "
                  "(gdp_graph.importance), the least important unit starting lowest, so the short "
                  "training before fix_at refines a ranking instead of creating one from equal "
                  "gates. Applied by gdp-graph train and prune, or by "
                  "gdp_graph.importance.init_gates(gated, batches, loss_fn) after attach().",
                  Regularizer.init),
    "init_spread": Field(Number(minimum=0, maximum=1, exclusive_maximum=True), "gdp only, with a ranked "
                         "init: theta starts at theta_start * (1 - init_spread * (1 - q)), q the unit's "
                         "rank quantile (0: least important); 0.9 starts the least important gate near "
                         "0.5.", Regularizer.init_spread),
    "init_rank": Field(Enum(INIT_RANKS), "gdp only, with a ranked init: how units of different groups "
                       "compare. group: each group's scores are divided by their mean first (for scores "
                       "whose scale differs from layer to layer: magnitude, activation), so every group "
                       "starts with a similar share of low gates; global: the raw scores rank across the "
                       "network (for scores on one scale: taylor's loss change), so the start allocates "
                       "the cut across layers.", Regularizer.init_rank),
    "price": Field(Enum(PRICES), "gdp only: what the penalty prices a unit at. cost: its share of "
                   "target.metric (the paper's bilinear FLOPs: a unit's gate pays what removing it "
                   "saves); units: one unit whatever it costs (the paper's plain L0 count: the task "
                   "alone ranks units across layers). Either way lambda steers the cost to the "
                   "target and the cut at fix_at meets it.", Regularizer.price),
    "hold_budget": Field(Bool(), "With a steered lambda: after every step the units that a cut to the "
                         "target would keep now (ranked by theta, as the cut ranks them) keep a gate >= 0.99, "
                         "so the gates can never collapse below the target; the others keep their gate value "
                         "while epsilon shrinks and only the price and the task move them, and the cut at "
                         "fix_at confirms what the gates did (gdp_graph.gates.hold). With init: magnitude and "
                         "lambda_controller.deadline (the defaults) the gates polarize before the cut.",
                         Regularizer.hold_budget),
    "lr_by_cost": Field(Bool(), "Scale each gate tensor's learning rate by its units' cost share (the "
                        "regularizer's gradient at every gate 1, relative to the cheapest group's, within [1, 4]): "
                        "Adam moves every theta by about its learning rate whatever the gradient's scale, so "
                        "without it a unit's cost reaches its gate only through the sign of the gradient "
                        "(gdp_graph.gates.regularizers.unit_cost_scales).", Regularizer.lr_by_cost),
}, doc="The sparsity regularizer on the gates.", nullable=True)

DEFAULTS_SPEC = Struct("defaults", {
    "level": Field(Enum(GROUP_LEVELS, {"block": _BLOCK_HINT + "; use block_level for blocks",
                                       "inner": _INNER_HINT}),
                   "Groups: " + _LEVEL_DOC, Defaults.level),
    "block_level": Field(Enum(BLOCK_LEVELS, {"channel": _CHANNEL_HINT}), "Removable residual "
                         "blocks: " + _BLOCK_LEVEL_DOC, Defaults.block_level),
    **GROUP_LIMITS,
}, doc="Settings of every group and block that no rule overrides.", nullable=True)


GROUP_SELECTOR_SPEC = Struct("group selector", {
    "module": Field(OneOrMany(Str("glob")), "Glob on qualified module names ('*' crosses "
                    "dots); matched against every member module."),
    "regex": Field(OneOrMany(Str("regex")), "Regular expression searched (re.search) in "
                   "qualified module names; anchor with ^ and $."),
    "type": Field(OneOrMany(Str("identifier")), "Module class name, e.g. Conv2d."),
    "coupling": Field(OneOrMany(Enum(COUPLINGS)), "A coupling kind of the group."),
    "unit": Field(OneOrMany(Enum(UNITS)), "The group's unit kind."),
}, doc="Selects channel groups. Keys are ANDed, list values ORed; module, regex and type must "
       "hold for one same member module.")

BLOCK_SELECTOR_SPEC = Struct("block selector", {
    "name": Field(OneOrMany(Str("glob")), "Glob on the block name (e.g. layer1.0)."),
    "regex": Field(OneOrMany(Str("regex")), "Regular expression searched in the block name."),
    "module": Field(OneOrMany(Str("glob")), "Glob on the qualified names of the block's "
                    "modules (any one matches)."),
}, doc="Selects removable blocks. Keys are ANDed, list values ORed.")

RULE_NAME = Field(Str(), "Optional label shown by inspect and in messages.")

GROUP_RULE_SPEC = Struct("group rule", {
    "match": Field(GROUP_SELECTOR_SPEC, "Which channel groups the rule applies to."),
    "name": RULE_NAME,
    "level": Field(Enum(GROUP_LEVELS, {"block": _BLOCK_HINT, "inner": _INNER_HINT}), _LEVEL_DOC),
    **_RULE_LIMITS,
}, doc="Overrides settings of the channel groups it matches.")

BLOCK_RULE_SPEC = Struct("block rule", {
    "blocks": Field(BLOCK_SELECTOR_SPEC, "Which removable blocks the rule applies to."),
    "name": RULE_NAME,
    "level": Field(Enum(BLOCK_LEVELS, {"channel": _CHANNEL_HINT}), _BLOCK_LEVEL_DOC),
}, doc="Overrides the block level of the removable blocks it matches.")

SCHEDULE_SPEC = Struct("schedule", {
    "epochs": Field(Int(minimum=1), "Epochs of the gated phase."),
    "finetune_epochs": Field(Int(minimum=0), "Epochs of fine-tuning after finalize (0: none)."),
    "lr": Field(Number(minimum=0, exclusive_minimum=True), "Weight learning rate in the gated phase."),
    "finetune_lr": Field(Number(minimum=0, exclusive_minimum=True), "Learning rate of fine-tuning."),
    "gate_lr": Field(Number(minimum=0, exclusive_minimum=True), "Learning rate of the gates' Adam."),
    "optimizer": Field(Enum(OPTIMIZERS), "sgd: SGD with momentum 0.9; adam: AdamW (the weights)."),
    "weight_decay": Field(Number(minimum=0), "Weight decay of the weight optimizer."),
    "steps": Field(Int(minimum=1), "Step budget of all training (gated phase up to the cut, then recovery); "
                                   "replaces epochs."),
}, doc="Training schedule of 'gdp-graph prune' (its flags override these keys).", nullable=True)

LATENCY_SPEC = Struct("latency", {
    "device": Field(Str(), "Device the latency is measured on (cpu, cuda, cuda:1).", LatencySettings.device),
    "batch": Field(Int(minimum=1), "Batch size of the timed forwards.", LatencySettings.batch),
    "threads": Field(Int(minimum=1), "torch threads during the measurement.", LatencySettings.threads),
    "dtype": Field(Enum(DTYPES), "Parameter and input dtype of the timed model.", LatencySettings.dtype),
    "memory_format": Field(Enum(MEMORY_FORMATS), "Memory format of the timed model and 4-d inputs.",
                           LatencySettings.memory_format),
    "cache": Field(Str(), "Folder of the cached latency tables (default ~/.cache/gdp-graph/latency)."),
    "points": Field(Int(minimum=2), "Kept widths timed per layer: every group at 1, (n-1)/n, ..., 1/n of "
                    "its units.", LatencySettings.points),
    "round_to": Field(Int(minimum=1), "Kept channel counts of the timed widths are multiples of this.",
                      LatencySettings.round_to),
    "corrections": Field(Int(minimum=0), "One-shot plans and GDP's cut at fix_at to a latency target: after the "
                         "table's plan, up to this many rounds of timing the pruned model against the original and "
                         "correcting the fraction aimed at (0: the table's plan as it is).",
                         LatencySettings.corrections),
}, doc="How latency is measured when target.metric is latency (a table timed on this device).", nullable=True)
DISTILL_SPEC = Struct("distill", {
    "temperature": Field(Number(minimum=0, exclusive_minimum=True), "Softmax temperature T of teacher and "
                         "student logits.", Distill.temperature),
    "alpha": Field(Number(minimum=0, maximum=1), "Weight of the distillation term (1 - alpha: the task loss).",
                   Distill.alpha),
}, doc="Logit distillation from the frozen original model ('gdp-graph prune --distill').", nullable=True)

RULE_SPEC = Variant("rule", {"match": ("group", GROUP_RULE_SPEC),
                             "blocks": ("block", BLOCK_RULE_SPEC)})

POLICY_SPEC = Struct("policy", {
    "version": Field(Int(minimum=VERSION, maximum=VERSION, range_message=(
        "unsupported policy version {value}; this gdp-graph reads version " + str(VERSION))),
        "Policy format version.", VERSION),
    "description": Field(Str(), "Free text shown by inspect."),
    "target": Field(TARGET_SPEC, "How much of the model to keep."),
    "regularizer": Field(REGULARIZER_SPEC, "The sparsity regularizer on the gates."),
    "defaults": Field(DEFAULTS_SPEC, "Settings that no rule overrides."),
    "rules": Field(Seq(RULE_SPEC, nullable=True), "Ordered rules; a later rule overrides an "
                   "earlier one for the keys it sets."),
    "schedule": Field(SCHEDULE_SPEC, "Training schedule of 'gdp-graph prune'."),
    "latency": Field(LATENCY_SPEC, "How latency is measured (target.metric: latency)."),
    "distill": Field(DISTILL_SPEC, "Logit distillation settings of 'gdp-graph prune --distill'."),
}, doc="A gdp-graph pruning policy (GDP: gates with differentiable polarization). Cross-field "
       "constraints (epsilon start > end, keys specific to one regularizer, contradictory rules) "
       "are checked by gdp-graph itself.", required=("version",))

SCHEMA_PATH = POLICY_DIR / "schema.json"


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the policy format, for editors."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "gdp-graph pruning policy", **POLICY_SPEC.json_schema()}


def json_schema_text() -> str:
    """:func:`json_schema` as the exact text of ``policies/schema.json``."""
    return json.dumps(json_schema(), indent=2) + "\n"


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    """Regenerate the shipped ``schema.json`` (``python -m gdp_graph.policy.schema``)."""
    path.write_text(json_schema_text(), encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover
    print(write_json_schema())
