"""From a located tree to a :class:`~gdp_graph.policy.model.Policy`: the schema check of
:data:`~gdp_graph.policy.schema.POLICY_SPEC`, then the cross-field rules that no single key can
check (see "Errors and contradictions" in :mod:`gdp_graph.policy`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from gdp_graph.policy.model import (
    BLOCK_SELECTOR_KEYS,
    GROUP_KEYS,
    GROUP_SELECTOR_KEYS,
    SELECTOR_KEY,
    Policy,
    Rule,
    Selector,
)
from gdp_graph.policy.schema import (
    DEFAULT_T,
    GDP_ONLY_KEYS,
    POLICY_SPEC,
    Defaults,
    Distill,
    EpsilonSchedule,
    LambdaController,
    LatencySettings,
    Regularizer,
    Target,
    TrainingSchedule,
)
from gdp_graph.policy.yamlcheck import INVALID, Checked, Location, Node, Reporter, format_value


def build_policy(root: Node, rep: Reporter, source: str, name: str) -> Policy:
    """Check ``root`` against the policy format and build the policy.

    Every problem goes to ``rep``, which raises (all of them at once) when there is any.
    """
    checked = POLICY_SPEC.check(root, "", rep)
    if checked is INVALID:
        rep.raise_if_any()
    policy = _PolicyBuilder(checked, rep).build(source, name)
    rep.raise_if_any()
    return policy


class _PolicyBuilder:
    """Turns a schema-checked tree into a :class:`Policy`, reporting cross-field problems."""

    def __init__(self, checked: Checked, rep: Reporter) -> None:
        self.checked = checked
        self.rep = rep
        self.locations: dict[str, Location] = {}
        self.incomplete: set[int] = set()

    def record(self, path: str, sub: Optional[Checked]) -> Optional[Checked]:
        """Remember where each key of ``sub`` was written, as ``path.key``; returns ``sub``."""
        if sub is not None:
            for k in sub.entries:
                self.locations[f"{path}.{k}"] = sub.key_location(k)
        return sub

    def section(self, key: str) -> Optional[Checked]:
        return self.record(key, self.checked.sub(key))

    def build(self, source: str, name: str) -> Policy:
        values = self.checked.values
        valid = [(i, c) for i, c in enumerate(values.get("rules", [])) if c is not INVALID]
        rules = [self.rule(i, c) for i, c in valid]
        self.contradictions([c for _, c in valid], rules)
        return Policy(version=values.get("version", 1), target=self.target(),
                      regularizer=self.regularizer(), defaults=self.defaults(),
                      rules=tuple(rules), schedule=self.schedule(), latency=self.latency(), distill=self.distill(),
                      description=values.get("description", ""),
                      name=name, source=source, locations=self.locations)

    def _plain(self, name: str, kind: type) -> Any:
        """A section whose keys are exactly the fields of ``kind`` (the defaults when absent)."""
        sub = self.section(name)
        return kind(**sub.values) if sub else kind()

    def target(self) -> Target:
        return self._plain("target", Target)

    def schedule(self) -> TrainingSchedule:
        return self._plain("schedule", TrainingSchedule)

    def latency(self) -> LatencySettings:
        return self._plain("latency", LatencySettings)

    def distill(self) -> Distill:
        return self._plain("distill", Distill)

    def defaults(self) -> Defaults:
        sub = self.section("defaults")
        if sub is None:
            return Defaults()
        self.check_gate_removes("defaults", sub)
        return Defaults(**sub.values)

    def check_gate_removes(self, path: str, sub: Checked) -> None:
        if sub.values.get("level") == "channel" and sub.values.get("max_fraction") == 0:
            self.rep.error(sub.value_location("max_fraction"), f"{path}.max_fraction: 0 allows "
                           f"no removal, contradicting level: channel in the same mapping "
                           "(use level: none to keep groups whole)")

    def regularizer(self) -> Regularizer:
        sub = self.section("regularizer")
        if sub is None:
            return Regularizer()
        values = sub.values
        reg_name = values.get("name", Regularizer.name)
        self.only_for(sub, "t", reg_name, "polarization")
        for key in GDP_ONLY_KEYS:
            self.only_for(sub, key, reg_name, "gdp")
        epsilon = self.epsilon(sub.sub("epsilon")) if reg_name == "gdp" else None
        t = values.get("t", DEFAULT_T) if reg_name == "polarization" else None
        lam = values.get("lambda", Regularizer.lambda_)
        controller = self.controller(sub, lam)
        return Regularizer(name=reg_name, lambda_=lam, lambda_controller=controller,
                           epsilon=epsilon, t=t,
                           threshold=values.get("threshold", Regularizer.threshold),
                           fix_at=values.get("fix_at", Regularizer.fix_at),
                           reopen=values.get("reopen", Regularizer.reopen),
                           init=values.get("init", Regularizer.init),
                           init_spread=values.get("init_spread", Regularizer.init_spread),
                           init_rank=values.get("init_rank", Regularizer.init_rank),
                           price=values.get("price", Regularizer.price),
                           hold_budget=values.get("hold_budget", Regularizer.hold_budget),
                           lr_by_cost=values.get("lr_by_cost", Regularizer.lr_by_cost))

    def only_for(self, sub: Checked, key: str, reg_name: str, wanted: str) -> None:
        if key in sub.entries and reg_name != wanted:
            self.rep.error(sub.key_location(key), f"regularizer.{key} only applies to name: "
                           f"{wanted} (name is {reg_name!r}); remove it")

    def epsilon(self, sub: Optional[Checked]) -> EpsilonSchedule:
        eps = EpsilonSchedule(**sub.values) if sub else EpsilonSchedule()
        bad_key = "end" if sub and "end" in sub.values else "start"
        if eps.start <= eps.end:
            loc = sub.value_location(bad_key) if sub else self.checked.location
            self.rep.error(loc, f"regularizer.epsilon: start ({eps.start!r}) must be greater "
                           f"than end ({eps.end!r}); epsilon is annealed from start down to end")
        return eps

    def controller(self, reg: Checked, lam: float) -> LambdaController:
        sub = self.record("regularizer.lambda_controller", reg.sub("lambda_controller"))
        ctrl = LambdaController(**sub.values) if sub else LambdaController()
        if ctrl.kind == "constant":
            for key in ("gain", "min", "max", "step", "lead", "deadline"):
                if sub is not None and key in sub.entries:
                    self.rep.error(sub.key_location(key), f"regularizer.lambda_controller.{key} "
                                   "only applies to kind: proportional (kind is 'constant')")
            return LambdaController(kind="constant")
        if ctrl.min > ctrl.max:
            loc = sub.value_location("max" if "max" in sub.entries else "min") if sub \
                else reg.location
            self.rep.error(loc, f"regularizer.lambda_controller: min ({ctrl.min!r}) is greater "
                           f"than max ({ctrl.max!r})")
        else:
            self.check_lambda(reg, sub, lam, ctrl)
        return ctrl

    def check_lambda(self, reg: Checked, sub: Optional[Checked], lam: float,
                     ctrl: LambdaController) -> None:
        bound = "max" if lam > ctrl.max else "min"
        if "lambda" in reg.entries or sub is None:
            loc = reg.value_location("lambda")
        else:
            loc = sub.value_location(bound)
        if lam == 0 and ctrl.kind == "proportional":
            self.rep.error(loc, "regularizer.lambda: 0 cannot be steered by a proportional "
                           "controller (it multiplies lambda); use a positive value or "
                           "lambda_controller: {kind: constant}")
        elif not ctrl.min <= lam <= ctrl.max:
            self.rep.error(loc, f"regularizer.lambda ({lam!r}) is outside lambda_controller "
                           f"[min, max] = [{ctrl.min!r}, {ctrl.max!r}]")

    def rule(self, index: int, checked: Checked) -> Rule:
        path = f"rules[{index}]"
        target = checked.variant or "group"
        key = SELECTOR_KEY[target]
        sel = checked.sub(key)
        if sel is not None and not sel.node.value:
            wanted = GROUP_SELECTOR_KEYS if target == "group" else BLOCK_SELECTOR_KEYS
            every = "group, set the key" if target == "group" else "block, set block_level"
            self.rep.error(sel.location, f"{path}.{key} is empty; give at least one of "
                           f"{', '.join(wanted)} (to change every {every} in defaults)")
        if sel is None or set(sel.values) != set(sel.node.value):
            self.incomplete.add(index)  # its selector has errors: no contradiction checks
        settings = [k for k in checked.node.value if k not in (key, "name")]
        if not settings:
            allowed = ", ".join(GROUP_KEYS) if target == "group" else "level"
            self.rep.error(checked.location, f"{path} sets nothing; add at least one of "
                           f"{allowed}")
        self.check_gate_removes(path, checked)
        values = {k: v for k, v in checked.values.items() if k not in (key, "name")}
        selector = Selector(**sel.values) if sel else Selector()
        return Rule.of(index, target, selector, values, name=checked.values.get("name"), location=checked.location)

    def contradictions(self, checked: Sequence[Checked], rules: Sequence[Rule]) -> None:
        """Report a key set to different values by two rules with the same selector."""
        last: dict[tuple[str, Any, str], tuple[Rule, Checked]] = {}
        for rule, chk in zip(rules, checked):
            if rule.index in self.incomplete:
                continue
            identity = rule.selector.canonical()
            for key, value in rule.settings().items():
                slot = (rule.target, identity, key)
                if slot in last:
                    other, other_chk = last[slot]
                    previous = getattr(other, key)
                    if previous != value:
                        self.rep.error(chk.value_location(key), self.contradiction_message(
                            rule, other, other_chk, key, previous, value))
                last[slot] = (rule, chk)

    @staticmethod
    def contradiction_message(rule: Rule, other: Rule, other_chk: Checked, key: str,
                              previous: Any, value: Any) -> str:
        return (f"rules[{rule.index}].{key}: contradicts rules[{other.index}] at "
                f"{other_chk.value_location(key)}, which has the same selector "
                f"{rule.selector.describe()} and sets {key}: {format_value(previous)} "
                f"(here {format_value(value)}); merge the rules or make the selectors differ")
