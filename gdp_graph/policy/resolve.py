"""What a policy does to an analysed model: which rules select which channel groups and
removable blocks, the effective settings of each, how many units each group may lose, and why
an item stays without gates. Pure: nothing is modified.

The matching and gating semantics are documented in :mod:`gdp_graph.policy` ("Rule semantics",
"Gating"); :func:`resolve` is the entry point.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Protocol, Sequence

from gdp_graph.policy.model import GROUP_KEYS, Policy, Rule, Selector
from gdp_graph.policy.structure import inner_block_problem, inner_groups, uniform_sets

if TYPE_CHECKING:  # pragma: no cover
    from gdp_graph.graph.groups import Block, ChannelGroup


class PolicyWarning(UserWarning):
    """A valid policy that probably does not do what was meant (e.g. a rule matching nothing)."""


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _member_matches(selector: Selector, module: str, module_type: str) -> bool:
    return ((not selector.module or any(fnmatchcase(module, p) for p in selector.module))
            and (not selector.regex or any(_regex(p).search(module) for p in selector.regex))
            and (not selector.type or module_type in selector.type))


def selects_group(selector: Selector, group: "ChannelGroup") -> bool:
    """True when the group satisfies every selector key: ``unit`` and ``coupling`` test the
    group, ``module``, ``regex`` and ``type`` must hold together for one member module."""
    if selector.unit and group.unit not in selector.unit:
        return False
    if selector.coupling and not set(selector.coupling) & set(group.couplings):
        return False
    if not (selector.module or selector.regex or selector.type):
        return True
    types = list(group.module_types) + [""] * (len(group.modules) - len(group.module_types))
    return any(_member_matches(selector, m, t) for m, t in zip(group.modules, types))


def selects_block(selector: Selector, block: "Block") -> bool:
    """True when the block satisfies every selector key: ``name`` and ``regex`` test the block
    name, ``module`` any of the block's modules."""
    return ((not selector.name or any(fnmatchcase(block.name, p) for p in selector.name))
            and (not selector.regex or any(_regex(p).search(block.name) for p in selector.regex))
            and (not selector.module or any(fnmatchcase(m, p) for m in block.modules
                                            for p in selector.module)))


def matched_ids(rule: Rule, items: Iterable[Any]) -> frozenset[int]:
    """The ids of the ``items`` that ``rule`` selects (groups for a group rule, blocks for a
    block rule)."""
    selects = selects_group if rule.target == "group" else selects_block
    return frozenset(x.id for x in items if selects(rule.selector, x))


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
    uniform: bool = False  #: keeps the unit count of its uniform set (see :mod:`.structure`)

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
    #: gated groups that keep one unit count, each a sorted tuple of ids (see :mod:`.structure`)
    uniform_sets: tuple[tuple[int, ...], ...] = ()
    #: blocks at level ``inner`` that can go: block id -> its inner groups (all gated)
    inner_blocks: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

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
        lines += [f"  uniform set: groups {list(s)}" for s in self.uniform_sets]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  ungated {k} {i}: {r}" for k, i, r in self.ungated()]
        return "\n".join(lines)


def resolve(policy: Policy, groups: Iterable["ChannelGroup"],
            blocks: Iterable["Block"] = ()) -> Resolution:
    """Apply ``policy`` to the analysed ``groups`` and ``blocks`` (pure: nothing is modified).

    Each :data:`Resolution.warnings` entry (a rule that matches nothing or has no effect) is
    also issued as a :class:`PolicyWarning` located at the rule's file and line.

    Raises:
        PolicyError: ``uniform: true`` ties gated groups of different sizes (located at the
            rule that set it; see :mod:`gdp_graph.policy.structure`).
    """
    groups, blocks = list(groups), list(blocks)
    matches = {r.index: matched_ids(r, groups if r.target == "group" else blocks)
               for r in policy.rules}
    effective: set[int] = set()
    reasons: dict[tuple[str, int], str] = {}
    gsettings, removable, sources = _resolve_groups(policy, groups, matches, effective, reasons)
    gated = [g for g in groups if ("group", g.id) not in reasons]
    sets = uniform_sets(policy, gated, {g: s.uniform for g, s in gsettings.items()}, sources)
    bsettings, inner = _resolve_blocks(policy, blocks, groups, matches, effective, reasons)
    rule_matches = tuple((tuple(sorted(matches[r.index])), ()) if r.target == "group"
                         else ((), tuple(sorted(matches[r.index]))) for r in policy.rules)
    found = _rule_warnings(policy, matches, effective)
    for rule, message in found:
        warnings.warn_explicit(message, PolicyWarning, rule.location.source,
                               max(rule.location.line, 1))
    return Resolution(policy=policy, group_settings=gsettings, block_settings=bsettings,
                      rule_matches=rule_matches, warnings=[m for _, m in found],
                      removable=removable, reasons=reasons, uniform_sets=sets,
                      inner_blocks=inner)


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


def _resolve_groups(policy: Policy, groups: Sequence["ChannelGroup"], matches: _Matches,
                    effective: set[int], reasons: dict[tuple[str, int], str]
                    ) -> tuple[dict[int, GroupSettings], dict[int, int], dict[int, Optional[int]]]:
    """Settings, removable counts, and which rule set each group's ``uniform`` (None: the
    defaults)."""
    base = {k: getattr(policy.defaults, k) for k in GROUP_KEYS}
    settings: dict[int, GroupSettings] = {}
    removable: dict[int, int] = {}
    sources: dict[int, Optional[int]] = {}
    for g in groups:
        values, setters, applied = _settle(base, policy.group_rules, g.id, matches)
        effective.update(setters.values())
        sources[g.id] = setters.get("uniform")
        s = settings[g.id] = GroupSettings(rules=applied, **values)
        frozen = _frozen_count(g)
        removable[g.id] = max_removable(s, g.size, frozen=frozen,
                                        divisor=getattr(g, "divisor", 1))
        reason = _group_reason(policy, g, s, setters, removable[g.id], frozen)
        if reason:
            reasons[("group", g.id)] = reason
    return settings, removable, sources


def _resolve_blocks(policy: Policy, blocks: Sequence["Block"], groups: Sequence["ChannelGroup"],
                    matches: _Matches, effective: set[int], reasons: dict[tuple[str, int], str]
                    ) -> tuple[dict[int, BlockSettings], dict[int, tuple[int, ...]]]:
    """Block settings, and the inner groups of every block at level ``inner`` that can go.
    Needs the groups' reasons already in ``reasons`` (an ungated inner group keeps its block)."""
    settings: dict[int, BlockSettings] = {}
    inner: dict[int, tuple[int, ...]] = {}
    by_id = {g.id: g for g in groups}
    group_reasons = {i: r for (kind, i), r in reasons.items() if kind == "group"}
    for b in blocks:
        values, setters, applied = _settle({"level": policy.defaults.block_level},
                                           policy.block_rules, b.id, matches)
        effective.update(setters.values())
        s = settings[b.id] = BlockSettings(level=values["level"], rules=applied)
        reason = _block_reason(policy, b, s, setters)
        if reason is None and s.level == "inner":
            ids = inner_groups(groups, b)
            problem = inner_block_problem(ids, by_id, group_reasons)
            by = _level_by(policy, setters)
            if problem is None:
                inner[b.id] = ids
                # no gate of its own: it is listed as ungated, with what removes it
                reason = f"no block gate: removed when its inner groups {list(ids)} lose every unit ({by})"
            else:
                reason = f"never removed: {by}, but {problem}"
        if reason:
            reasons[("block", b.id)] = reason
    return settings, inner


def _level_by(policy: Policy, setters: Mapping[str, int]) -> str:
    if "level" not in setters:
        return f"block_level {policy.defaults.block_level}"
    return f"level inner by {_where_set(policy, setters['level'], '')}"


def _frozen_count(group: "ChannelGroup") -> int:
    frozen = getattr(group, "frozen_units", None)
    if frozen is None or len(frozen) != group.size:
        return 0
    return int(frozen.sum())


def _where_set(policy: Policy, rule_index: Optional[int], default_key: str) -> str:
    if rule_index is None:
        loc = policy.locations.get(default_key)
        return f"{default_key} ({loc.file_line})" if loc else default_key
    rule = policy.rules[rule_index]
    return f"{rule.label} ({rule.location.file_line})"


def _group_reason(policy: Policy, group: "ChannelGroup", s: GroupSettings,
                  setters: Mapping[str, int], removable: int, frozen: int) -> Optional[str]:
    if not group.prunable:
        return f"frozen: {group.describe_frozen() or 'every unit is frozen'}"
    if not group.exact and not s.allow_inexact:
        return f"inexact and allow_inexact is false ({'; '.join(group.inexact_reasons)})"
    if s.level == "none":
        return f"level: none by {_where_set(policy, setters.get('level'), 'defaults.level')}"
    if removable == 0:
        return (f"nothing removable: {group.size} units with min_channels {s.min_channels}, "
                f"max_fraction {s.max_fraction:g}, round_to {s.round_to}"
                + (f", {frozen} frozen" if frozen else "")
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
