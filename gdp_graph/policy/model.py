"""What a validated policy is: the immutable :class:`Policy` with its ordered :class:`Rule`\\ s
and their :class:`Selector`\\ s. The format and its semantics are documented in
:mod:`gdp_graph.policy`; building one from a document is :mod:`gdp_graph.policy.build`, and
applying one to a model is :mod:`gdp_graph.policy.resolve`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

from gdp_graph.policy.schema import (
    BLOCK_SELECTOR_SPEC,
    GROUP_SELECTOR_SPEC,
    Defaults,
    LatencySettings,
    Distill,
    Regularizer,
    Target,
    TrainingSchedule,
)
from gdp_graph.policy.yamlcheck import Location

GROUP_KEYS = ("level", "min_channels", "round_to", "max_fraction", "allow_inexact", "uniform")
GROUP_SELECTOR_KEYS = tuple(GROUP_SELECTOR_SPEC.fields)  #: module, regex, type, coupling, unit
BLOCK_SELECTOR_KEYS = tuple(BLOCK_SELECTOR_SPEC.fields)  #: name, regex, module
SELECTOR_KEY = {"group": "match", "block": "blocks"}  #: rule target -> key of its selector


@dataclass(frozen=True)
class Selector:
    """What a rule matches; an empty tuple means the key is not used. The matching itself is
    :func:`gdp_graph.policy.resolve.selects_group` / ``selects_block``."""

    module: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    type: tuple[str, ...] = ()
    coupling: tuple[str, ...] = ()
    unit: tuple[str, ...] = ()
    name: tuple[str, ...] = ()  #: blocks only

    def used(self) -> dict[str, tuple[str, ...]]:
        """The keys this selector sets, with their values."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def canonical(self) -> frozenset[tuple[str, frozenset[str]]]:
        """Order-insensitive identity, to detect rules with the same selector."""
        return frozenset((k, frozenset(v)) for k, v in self.used().items())

    def describe(self) -> str:
        parts = [f"{k}: {v[0] if len(v) == 1 else list(v)}" for k, v in self.used().items()]
        return "{" + ", ".join(parts) + "}"


@dataclass(frozen=True)
class Rule:
    """One entry of ``rules``: ``target`` is ``group`` (``match:``) or ``block`` (``blocks:``);
    ``sets`` holds the :data:`GROUP_KEYS` it sets, in that order (:meth:`of` builds it)."""

    index: int
    target: str
    selector: Selector
    sets: tuple[tuple[str, Any], ...] = ()
    name: Optional[str] = None
    location: Location = field(default=Location("<dict>"), compare=False)

    @classmethod
    def of(cls, index: int, target: str, selector: Selector, settings: Mapping[str, Any], **kw: Any) -> "Rule":
        """A rule setting ``settings`` (group keys; None means not set)."""
        unknown = set(settings) - set(GROUP_KEYS)
        if unknown:
            raise ValueError(f"not group settings: {', '.join(sorted(unknown))}")
        sets = tuple((k, settings[k]) for k in GROUP_KEYS if settings.get(k) is not None)
        return cls(index=index, target=target, selector=selector, sets=sets, **kw)

    def settings(self) -> dict[str, Any]:
        """The keys this rule sets, with their values."""
        return dict(self.sets)

    def __getattr__(self, key: str) -> Any:
        """``rule.round_to`` and the other group keys: the value set, or None."""
        if key in GROUP_KEYS:
            return dict(self.__dict__.get("sets", ())).get(key)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    @property
    def label(self) -> str:
        """``rules[3]`` or ``rules[3] 'keep-stem'``."""
        return f"rules[{self.index}]" + (f" {self.name!r}" if self.name else "")


@dataclass(frozen=True)
class Policy:
    """A validated policy. Build one with :func:`~gdp_graph.policy.load_policy`,
    :func:`~gdp_graph.policy.policy_from_dict` or :meth:`Policy.default`; every field has the
    documented default."""

    version: int = 1
    target: Target = field(default_factory=Target)
    regularizer: Regularizer = field(default_factory=Regularizer)
    defaults: Defaults = field(default_factory=Defaults)
    rules: tuple[Rule, ...] = ()
    schedule: TrainingSchedule = field(default_factory=TrainingSchedule)
    latency: LatencySettings = field(default_factory=LatencySettings)
    distill: Distill = field(default_factory=Distill)
    description: str = ""
    name: str = field(default="default", compare=False)
    source: str = field(default="<default>", compare=False)
    #: where each key was written (``defaults.level`` -> location); empty for built-ins
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False, hash=False,
                                              repr=False)

    @classmethod
    def default(cls) -> "Policy":
        """The built-in default (identical to the settings of ``policies/default.yaml``)."""
        return cls()

    @property
    def group_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.target == "group")

    @property
    def block_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.target == "block")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :func:`~gdp_graph.policy.policy_from_dict` turns back into an equal
        policy."""
        reg = self.regularizer
        regularizer: dict[str, Any] = {"name": reg.name, "lambda": reg.lambda_,
                                       "threshold": reg.threshold, "fix_at": reg.fix_at, "reopen": reg.reopen,
                                       "hold_budget": reg.hold_budget, "lr_by_cost": reg.lr_by_cost}
        ctrl = reg.lambda_controller
        regularizer["lambda_controller"] = (
            {"kind": ctrl.kind} if ctrl.kind == "constant" else _fields_dict(ctrl))
        if reg.epsilon is not None:
            regularizer["epsilon"] = {k: v for k, v in _fields_dict(reg.epsilon).items() if v is not None}
        if reg.t is not None:
            regularizer["t"] = reg.t
        if reg.name == "gdp":
            regularizer.update(init=reg.init, init_spread=reg.init_spread, init_rank=reg.init_rank,
                               price=reg.price)
        out: dict[str, Any] = {"version": self.version}
        if self.description:
            out["description"] = self.description
        out.update(target=_fields_dict(self.target), regularizer=regularizer,
                   defaults=_fields_dict(self.defaults), rules=[_rule_dict(r) for r in self.rules])
        schedule = {k: v for k, v in _fields_dict(self.schedule).items() if v is not None}
        if schedule:
            out["schedule"] = schedule
        if self.latency != LatencySettings():
            out["latency"] = {k: v for k, v in _fields_dict(self.latency).items() if v is not None}
        if self.distill != Distill():
            out["distill"] = _fields_dict(self.distill)
        return out


def _fields_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _rule_dict(rule: Rule) -> dict[str, Any]:
    selector = {k: list(v) for k, v in rule.selector.used().items()}
    out: dict[str, Any] = {SELECTOR_KEY[rule.target]: selector}
    if rule.name:
        out["name"] = rule.name
    out.update(rule.settings())
    return out
