"""Declarative pruning policies: load and validate a YAML policy, then resolve it against the
channel groups and removable blocks of an analysed model.

A policy (see ``gdp_graph/policies/default.yaml`` for every key, commented) has a ``target``
(how much to keep), a ``regularizer`` (how gates are trained), ``defaults`` (settings of every
group and block) and ordered ``rules`` that override the defaults for what they match.

Rule semantics
--------------
* A *group rule* has ``match:`` and may set ``level`` (``channel`` | ``none``),
  ``min_channels``, ``round_to``, ``max_fraction``, ``allow_inexact``. A *block rule* has
  ``blocks:`` and may set ``level`` (``block`` | ``none``). Both may have a ``name``.
* Rules apply in file order; a later rule overrides an earlier one for the keys it sets, and
  leaves the other keys alone.
* Several keys in a selector are ANDed; a list value is ORed.
* Group selectors: ``module`` (glob, ``fnmatchcase`` against the whole qualified name, ``*``
  crosses dots), ``regex`` (``re.search``: unanchored, use ``^``/``$`` to anchor) and ``type``
  (exact class name) describe a *member module*: a group matches when at least one of its modules
  satisfies all of them together. ``coupling`` (any of the group's couplings) and ``unit`` (the
  group's unit kind) describe the group itself.
* Block selectors: ``name`` (glob) and ``regex`` (``re.search``) test the block name, ``module``
  (glob) any of the block's modules.
* Rules are numbered from 0 in file order and named ``rules[i]`` in every message.
* A rule that matches nothing, or whose every setting is overridden by later rules everywhere
  it matches, is a *warning* of :func:`resolve`, not an error.

Gating
------
A group gets gates when it is prunable, exact (or ``allow_inexact``), at ``level: channel`` and
:func:`max_removable` allows removing at least one unit; a block when it is prunable and at
``level: block``. :meth:`Resolution.ungated` gives the first failing condition, in that order.

Errors and contradictions
-------------------------
Loading collects every problem and raises one :class:`PolicyError` whose lines each start with
``file:line:col:`` (``0:0`` for a dict, whose messages name the key path instead). Besides
syntax, duplicate keys (which PyYAML silently accepts), unknown keys, types (a boolean is never
an integer; an unquoted ``1e-4`` is read as a number), ranges and enums, these are errors:

* two rules with the same selector (same kind, same keys, same values in any order) setting
  different values for the same key: the earlier value could never apply;
* ``level: channel`` together with ``max_fraction: 0`` in the same mapping (a gate that can
  remove nothing);
* ``t`` with a regularizer other than ``polarization``, ``epsilon`` with one other than ``gdp``,
  ``gain``/``min``/``max``/``step`` with a ``constant`` lambda controller;
* epsilon ``start <= end``; lambda controller ``min > max``; with a proportional controller,
  ``lambda`` outside ``[min, max]`` or equal to 0;
* an empty selector, a rule that sets nothing, a rule with both or neither of match/blocks.

``min_channels``, ``round_to`` and ``max_fraction`` never contradict each other: every one is
honoured (see :func:`max_removable`); a group left with nothing removable is reported by
:meth:`Resolution.ungated`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field, fields
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Protocol, Sequence, Union

from .policy_schema import (  # noqa: F401  (re-exported)
    DEFAULT_T,
    INVALID,
    POLICY_SPEC,
    Checked,
    Defaults,
    Diagnostic,
    EpsilonSchedule,
    LambdaController,
    Location,
    Node,
    PolicyError,
    Regularizer,
    Reporter,
    Target,
    format_value,
    from_python,
    json_schema,
    parse_yaml,
)

if TYPE_CHECKING:  # pragma: no cover
    from .groups import Block, ChannelGroup

__all__ = [
    "BlockSettings", "Defaults", "Diagnostic", "EpsilonSchedule", "GroupSettings",
    "LambdaController", "Location", "Policy", "PolicyError", "PolicyWarning", "Regularizer",
    "Resolution", "Rule", "Selector", "Target", "available_policies", "json_schema",
    "load_policy", "max_removable", "policy_from_dict", "resolve",
]

POLICY_DIR = Path(__file__).resolve().parent / "policies"
GROUP_KEYS = ("level", "min_channels", "round_to", "max_fraction", "allow_inexact")
GROUP_SELECTOR_KEYS = ("module", "regex", "type", "coupling", "unit")
BLOCK_SELECTOR_KEYS = ("name", "regex", "module")


class PolicyWarning(UserWarning):
    """A valid policy that probably does not do what was meant (e.g. a rule matching nothing)."""


# --------------------------------------------------------------------------------------------
# The policy tree
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclass(frozen=True)
class Selector:
    """What a rule matches; an empty tuple means the key is not used. See the module doc."""

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

    def _member_matches(self, module: str, module_type: str) -> bool:
        return ((not self.module or any(fnmatchcase(module, p) for p in self.module))
                and (not self.regex or any(_regex(p).search(module) for p in self.regex))
                and (not self.type or module_type in self.type))

    def matches_group(self, group: "ChannelGroup") -> bool:
        """True when the group satisfies every selector key (see the module doc)."""
        if self.unit and group.unit not in self.unit:
            return False
        if self.coupling and not set(self.coupling) & set(group.couplings):
            return False
        if not (self.module or self.regex or self.type):
            return True
        types = list(group.module_types) + [""] * (len(group.modules) - len(group.module_types))
        return any(self._member_matches(m, t) for m, t in zip(group.modules, types))

    def matches_block(self, block: "Block") -> bool:
        """True when the block satisfies every selector key."""
        return ((not self.name or any(fnmatchcase(block.name, p) for p in self.name))
                and (not self.regex or any(_regex(p).search(block.name) for p in self.regex))
                and (not self.module or any(fnmatchcase(m, p) for m in block.modules
                                            for p in self.module)))


@dataclass(frozen=True)
class Rule:
    """One entry of ``rules``: ``target`` is ``group`` (``match:``) or ``block`` (``blocks:``);
    settings left ``None`` are not set by the rule."""

    index: int
    target: str
    selector: Selector
    level: Optional[str] = None
    min_channels: Optional[int] = None
    round_to: Optional[int] = None
    max_fraction: Optional[float] = None
    allow_inexact: Optional[bool] = None
    name: Optional[str] = None
    location: Location = field(default=Location("<dict>"), compare=False)

    def settings(self) -> dict[str, Any]:
        """The keys this rule sets, with their values."""
        return {k: getattr(self, k) for k in GROUP_KEYS if getattr(self, k) is not None}

    @property
    def label(self) -> str:
        """``rules[3]`` or ``rules[3] 'keep-stem'``."""
        return f"rules[{self.index}]" + (f" {self.name!r}" if self.name else "")

    def matches(self, item: Any) -> bool:
        if self.target == "group":
            return self.selector.matches_group(item)
        return self.selector.matches_block(item)


@dataclass(frozen=True)
class Policy:
    """A validated policy. Build one with :func:`load_policy`, :func:`policy_from_dict` or
    :meth:`Policy.default`; every field has the documented default."""

    version: int = 1
    target: Target = field(default_factory=Target)
    regularizer: Regularizer = field(default_factory=Regularizer)
    defaults: Defaults = field(default_factory=Defaults)
    rules: tuple[Rule, ...] = ()
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
        """A plain dict that :func:`policy_from_dict` turns back into an equal policy."""
        reg = self.regularizer
        regularizer: dict[str, Any] = {"name": reg.name, "lambda": reg.lambda_,
                                       "threshold": reg.threshold}
        ctrl = reg.lambda_controller
        regularizer["lambda_controller"] = (
            {"kind": ctrl.kind} if ctrl.kind == "constant" else _fields_dict(ctrl))
        if reg.epsilon is not None:
            regularizer["epsilon"] = _fields_dict(reg.epsilon)
        if reg.t is not None:
            regularizer["t"] = reg.t
        out: dict[str, Any] = {"version": self.version}
        if self.description:
            out["description"] = self.description
        out.update(target=_fields_dict(self.target), regularizer=regularizer,
                   defaults=_fields_dict(self.defaults), rules=[_rule_dict(r) for r in self.rules])
        return out


def _fields_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _rule_dict(rule: Rule) -> dict[str, Any]:
    key = "match" if rule.target == "group" else "blocks"
    out: dict[str, Any] = {key: {k: list(v) for k, v in rule.selector.used().items()}}
    if rule.name:
        out["name"] = rule.name
    out.update(rule.settings())
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def available_policies() -> list[str]:
    """Names of the policies shipped with the package (``load_policy(name)`` loads one)."""
    return sorted(p.stem for p in POLICY_DIR.glob("*.yaml"))


def _looks_like_path(text: str) -> bool:
    if "\n" in text:
        return False
    return text.endswith((".yaml", ".yml")) or os.path.isfile(text)


def load_policy(path_or_text: Union[str, "os.PathLike[str]"], *,
                name: Optional[str] = None) -> Policy:
    """Load and validate a policy from a file path, a shipped policy name (``"vit"``) or YAML
    text. ``name`` names the policy (and, for text, the source in messages).

    Raises :class:`PolicyError` listing every problem, each as ``file:line:col: message``.
    """
    if not isinstance(path_or_text, (str, os.PathLike)):
        raise TypeError(f"load_policy takes a path or YAML text, not "
                        f"{type(path_or_text).__name__} (use policy_from_dict for a dict)")
    if isinstance(path_or_text, os.PathLike) or _looks_like_path(path_or_text):
        return _load_file(Path(path_or_text), str(path_or_text), name)
    if re.fullmatch(r"[\w-]+", path_or_text) and path_or_text in available_policies():
        shipped = POLICY_DIR / f"{path_or_text}.yaml"
        return _load_file(shipped, str(shipped), name or path_or_text)
    source = name or "<string>"
    return _build(_parse_text(path_or_text, source), source, name or source)


def _load_file(path: Path, source: str, name: Optional[str]) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([Diagnostic(Location(source), f"cannot read policy file: {exc}")]) \
            from exc
    return _build(_parse_text(text, source), source, name or path.stem)


def _parse_text(text: str, source: str) -> tuple[Node, Reporter]:
    """Parse YAML text; a syntax error or an empty document raises at once."""
    rep = Reporter()
    root = parse_yaml(text, source, rep)
    if root is None:
        if not rep.diagnostics:
            rep.error(Location(source, 1, 1), "policy is empty; expected a mapping with at "
                      "least 'version: 1'")
        raise PolicyError(rep.diagnostics)
    return root, rep


def policy_from_dict(d: Mapping[str, Any], source: str = "<dict>", *,
                     name: Optional[str] = None) -> Policy:
    """Validate a plain dict exactly like a YAML file (positions are reported as ``0:0``; the
    messages name the key path)."""
    rep = Reporter()
    root = from_python(d, source, "", rep)
    return _build((root, rep), source, name or source)


def _build(parsed: tuple[Node, Reporter], source: str, name: str) -> Policy:
    root, rep = parsed
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

    def section(self, key: str) -> Optional[Checked]:
        sub = self.checked.sub(key)
        if sub is not None:
            for k in sub.entries:
                self.locations[f"{key}.{k}"] = sub.key_location(k)
        return sub

    def build(self, source: str, name: str) -> Policy:
        values = self.checked.values
        rules_checked = [r for r in values.get("rules", []) if r is not INVALID]
        rules = [self.rule(i, c) for i, c in enumerate(values.get("rules", []))
                 if c is not INVALID]
        self.contradictions(rules_checked, rules)
        return Policy(version=values.get("version", 1), target=self.target(),
                      regularizer=self.regularizer(), defaults=self.defaults(),
                      rules=tuple(rules), description=values.get("description", ""),
                      name=name, source=source, locations=self.locations)

    def target(self) -> Target:
        sub = self.section("target")
        return Target(**sub.values) if sub else Target()

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
        self.only_for(sub, "epsilon", reg_name, "gdp")
        epsilon = self.epsilon(sub.sub("epsilon")) if reg_name == "gdp" else None
        t = values.get("t", DEFAULT_T) if reg_name == "polarization" else None
        lam = values.get("lambda", Regularizer.lambda_)
        controller = self.controller(sub, lam)
        return Regularizer(name=reg_name, lambda_=lam, lambda_controller=controller,
                           epsilon=epsilon, t=t,
                           threshold=values.get("threshold", Regularizer.threshold))

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
        sub = reg.sub("lambda_controller")
        values = dict(sub.values) if sub else {}
        if sub is not None:
            for k in sub.entries:
                self.locations[f"regularizer.lambda_controller.{k}"] = sub.key_location(k)
        ctrl = LambdaController(**values)
        if ctrl.kind == "constant":
            for key in ("gain", "min", "max", "step"):
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
        if lam == 0:
            self.rep.error(loc, "regularizer.lambda: 0 cannot be steered by a proportional "
                           "controller (it multiplies lambda); use a positive value or "
                           "lambda_controller: {kind: constant}")
        elif not ctrl.min <= lam <= ctrl.max:
            self.rep.error(loc, f"regularizer.lambda ({lam!r}) is outside lambda_controller "
                           f"[min, max] = [{ctrl.min!r}, {ctrl.max!r}]")

    def rule(self, index: int, checked: Checked) -> Rule:
        path = f"rules[{index}]"
        key = "match" if checked.variant == "group" else "blocks"
        sel = checked.sub(key)
        if sel is not None and not sel.node.value:
            wanted, every = (("module, regex, type, coupling, unit", "group, set the key")
                             if key == "match" else ("name, regex, module", "block, set "
                                                     "block_level"))
            self.rep.error(sel.location, f"{path}.{key} is empty; give at least one of "
                           f"{wanted} (to change every {every} in defaults)")
        if sel is None or set(sel.values) != set(sel.node.value):
            self.incomplete.add(index)  # its selector has errors: no contradiction checks
        settings = [k for k in checked.node.value if k not in (key, "name")]
        if not settings:
            allowed = ", ".join(GROUP_KEYS) if key == "match" else "level"
            self.rep.error(checked.location, f"{path} sets nothing; add at least one of "
                           f"{allowed}")
        self.check_gate_removes(path, checked)
        values = {k: v for k, v in checked.values.items() if k not in (key, "name")}
        selector = Selector(**sel.values) if sel else Selector()
        return Rule(index=index, target=checked.variant or "group", selector=selector,
                    name=checked.values.get("name"), location=checked.location, **values)

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


# --------------------------------------------------------------------------------------------
# Removal limits
# --------------------------------------------------------------------------------------------


class _Limits(Protocol):
    min_channels: int
    round_to: int
    max_fraction: float


def max_removable(settings: _Limits, size: int, *, frozen: int = 0, divisor: int = 1) -> int:
    """The largest number of units that may be removed from a group of ``size`` units.

    With ``kept = size - removed``, every constraint holds unless ``removed == 0``:

    * ``kept >= settings.min_channels`` and ``kept >= frozen`` (units that may never go);
    * ``removed <= floor(settings.max_fraction * size)`` (with a 1e-9 slack for rounding);
    * ``kept`` is a multiple of ``lcm(settings.round_to, divisor)`` -- rounding goes *up* to
      the next multiple (keeping more, removing less). Keeping the whole group is always allowed
      even when ``size`` is not a multiple, and ``kept == 0`` (a multiple of everything) is
      allowed only with ``min_channels: 0`` and ``max_fraction: 1``.

    Returns 0 when no removal satisfies every constraint.
    """
    if size <= 0:
        return 0
    step = math.lcm(max(settings.round_to, 1), max(divisor, 1))
    budget = math.floor(settings.max_fraction * size + 1e-9)
    keep_at_least = max(settings.min_channels, frozen, size - budget, 0)
    keep = -(-keep_at_least // step) * step
    return size - keep if keep < size else 0


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSettings:
    """The effective settings of one channel group; ``rules`` are the indices of the rules that
    matched it, in order."""

    level: str
    min_channels: int
    round_to: int
    max_fraction: float
    allow_inexact: bool
    rules: tuple[int, ...] = ()

    def max_removable(self, size: int, *, frozen: int = 0, divisor: int = 1) -> int:
        return max_removable(self, size, frozen=frozen, divisor=divisor)


@dataclass(frozen=True)
class BlockSettings:
    """The effective level of one removable block and the rules that matched it."""

    level: str
    rules: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Resolution:
    """A policy applied to an analysed model. An item is *gated* when it gets gates; every other
    item has a reason in :meth:`ungated`."""

    policy: Policy
    group_settings: Mapping[int, GroupSettings]
    block_settings: Mapping[int, BlockSettings]
    rule_matches: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    warnings: list[str]
    removable: Mapping[int, int]  #: per group: max_removable honouring frozen units, divisor
    reasons: Mapping[tuple[str, int], str]

    def gated_groups(self) -> list[int]:
        return [g for g in self.group_settings if ("group", g) not in self.reasons]

    def gated_blocks(self) -> list[int]:
        return [b for b in self.block_settings if ("block", b) not in self.reasons]

    def ungated(self) -> list[tuple[str, int, str]]:
        """``(kind, id, reason)`` for every group (``kind='group'``) and block that stays
        without gates, groups first, each in id order."""
        order = {"group": 0, "block": 1}
        return [(k, i, r) for (k, i), r in
                sorted(self.reasons.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))]

    def report(self) -> str:
        """A plain-text summary: rules with what they matched, warnings, ungated items."""
        lines = [f"policy {self.policy.name} ({self.policy.source})"]
        for rule, (gids, bids) in zip(self.policy.rules, self.rule_matches):
            what = f"{len(gids)} group(s)" if rule.target == "group" else f"{len(bids)} block(s)"
            lines.append(f"  {rule.label} {rule.selector.describe()} -> {what}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  ungated {k} {i}: {r}" for k, i, r in self.ungated()]
        return "\n".join(lines)


def _where_set(policy: Policy, rule_index: Optional[int], default_key: str) -> str:
    if rule_index is None:
        loc = policy.locations.get(default_key)
        return f"{default_key} ({loc.file_line})" if loc else default_key
    rule = policy.rules[rule_index]
    return f"{rule.label} ({rule.location.file_line})"


_Matches = Mapping[int, frozenset[int]]  #: rule index -> ids of the groups/blocks it matches


def _settle(base: dict[str, Any], rules: Iterable[Rule], item_id: int, matches: _Matches
            ) -> tuple[dict[str, Any], dict[str, int], tuple[int, ...]]:
    """Apply the matching rules in order: final values, which rule set each key, rules applied."""
    values, setters, applied = dict(base), {}, []
    for rule in rules:
        if item_id in matches[rule.index]:
            applied.append(rule.index)
            for key, value in rule.settings().items():
                values[key], setters[key] = value, rule.index
    return values, setters, tuple(applied)


def _frozen_count(group: "ChannelGroup") -> int:
    frozen = getattr(group, "frozen_units", None)
    if frozen is None or len(frozen) != group.size:
        return 0
    return int(frozen.sum())


def _group_reason(policy: Policy, group: "ChannelGroup", s: GroupSettings,
                  setters: Mapping[str, int], removable: int) -> Optional[str]:
    if not group.prunable:
        return f"frozen: {group.describe_frozen() or 'every unit is frozen'}"
    if not group.exact and not s.allow_inexact:
        return f"inexact and allow_inexact is false ({'; '.join(group.inexact_reasons)})"
    if s.level == "none":
        return f"level: none by {_where_set(policy, setters.get('level'), 'defaults.level')}"
    if removable == 0:
        return (f"nothing removable: {group.size} units with min_channels {s.min_channels}, "
                f"max_fraction {s.max_fraction:g}, round_to {s.round_to}"
                + (f", {_frozen_count(group)} frozen" if _frozen_count(group) else "")
                + (f", divisor {group.divisor}" if getattr(group, "divisor", 1) > 1 else ""))
    return None


def _block_reason(policy: Policy, block: "Block", s: BlockSettings,
                  setters: Mapping[str, int]) -> Optional[str]:
    if not block.prunable:
        return "frozen: " + "; ".join(block.frozen_reasons)
    if s.level == "none":
        if "level" not in setters:
            return "no block gate: block_level none"
        return f"no block gate: level none by {_where_set(policy, setters['level'], '')}"
    return None


def _rule_warnings(policy: Policy, matches: _Matches,
                   effective: set[int]) -> list[tuple[Rule, str]]:
    """Rules that match nothing, and rules overridden everywhere they match."""
    out = []
    for rule in policy.rules:
        if not matches[rule.index]:
            out.append((rule, f"{rule.location}: {rule.label} matches no {rule.target} "
                              f"({rule.selector.describe()})"))
        elif rule.index not in effective:
            out.append((rule, f"{rule.location}: {rule.label} has no effect: later rules "
                              f"override every key it sets on every {rule.target} it matches"))
    return out


def resolve(policy: Policy, groups: Iterable["ChannelGroup"],
            blocks: Iterable["Block"] = ()) -> Resolution:
    """Apply ``policy`` to the analysed ``groups`` and ``blocks`` (pure: nothing is modified).

    Each :data:`Resolution.warnings` entry (a rule that matches nothing or has no effect) is
    also issued as a :class:`PolicyWarning` located at the rule's file and line.
    """
    groups, blocks = list(groups), list(blocks)
    matches = {r.index: frozenset(x.id for x in (groups if r.target == "group" else blocks)
                                  if r.matches(x)) for r in policy.rules}
    effective: set[int] = set()
    reasons: dict[tuple[str, int], str] = {}
    gsettings, removable = _resolve_groups(policy, groups, matches, effective, reasons)
    bsettings = _resolve_blocks(policy, blocks, matches, effective, reasons)
    rule_matches = tuple((tuple(sorted(matches[r.index])), ()) if r.target == "group"
                         else ((), tuple(sorted(matches[r.index]))) for r in policy.rules)
    found = _rule_warnings(policy, matches, effective)
    for rule, message in found:
        warnings.warn_explicit(message, PolicyWarning, rule.location.source,
                               max(rule.location.line, 1))
    return Resolution(policy=policy, group_settings=gsettings, block_settings=bsettings,
                      rule_matches=rule_matches, warnings=[m for _, m in found],
                      removable=removable, reasons=reasons)


def _resolve_groups(policy: Policy, groups: Sequence["ChannelGroup"], matches: _Matches,
                    effective: set[int], reasons: dict[tuple[str, int], str]
                    ) -> tuple[dict[int, GroupSettings], dict[int, int]]:
    d = policy.defaults
    base = {"level": d.level, "min_channels": d.min_channels, "round_to": d.round_to,
            "max_fraction": d.max_fraction, "allow_inexact": d.allow_inexact}
    settings: dict[int, GroupSettings] = {}
    removable: dict[int, int] = {}
    for g in groups:
        values, setters, applied = _settle(base, policy.group_rules, g.id, matches)
        effective.update(setters.values())
        s = settings[g.id] = GroupSettings(rules=applied, **values)
        removable[g.id] = max_removable(s, g.size, frozen=_frozen_count(g),
                                        divisor=getattr(g, "divisor", 1))
        reason = _group_reason(policy, g, s, setters, removable[g.id])
        if reason:
            reasons[("group", g.id)] = reason
    return settings, removable


def _resolve_blocks(policy: Policy, blocks: Sequence["Block"], matches: _Matches,
                    effective: set[int], reasons: dict[tuple[str, int], str]
                    ) -> dict[int, BlockSettings]:
    settings: dict[int, BlockSettings] = {}
    for b in blocks:
        values, setters, applied = _settle({"level": policy.defaults.block_level},
                                           policy.block_rules, b.id, matches)
        effective.update(setters.values())
        s = settings[b.id] = BlockSettings(level=values["level"], rules=applied)
        reason = _block_reason(policy, b, s, setters)
        if reason:
            reasons[("block", b.id)] = reason
    return settings
