"""Declarative pruning policies: load and validate a YAML policy, then resolve it against the
channel groups and removable blocks of an analysed model.

A policy (see ``policies/default.yaml`` for every key, commented) has a ``target``
(how much to keep), a ``regularizer`` (how gates are trained), ``defaults`` (settings of every
group and block) and ordered ``rules`` that override the defaults for what they match.

Rule semantics
--------------
* A *group rule* has ``match:`` and may set ``level`` (``channel`` | ``none``),
  ``min_channels``, ``round_to``, ``max_fraction``, ``allow_inexact``, ``uniform``. A *block
  rule* has ``blocks:`` and may set ``level`` (``block`` | ``inner`` | ``none``). Both may
  have a ``name``.
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

A block at ``level: inner`` gets no gate: it is removed when every group inside it loses all
its units, which needs every such group gated with no frozen unit
(:attr:`Resolution.inner_blocks`; otherwise its reason says which group keeps it). Groups with
``uniform: true`` keep one unit count per set (:attr:`Resolution.uniform_sets`). Both are
defined in :mod:`gdp_graph.policy.structure`.

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

One error needs the model and is raised by :func:`resolve`, located at the rule: a
``uniform: true`` set whose gated groups have different sizes.

``min_channels``, ``round_to`` and ``max_fraction`` never contradict each other: every one is
honoured (see :func:`max_removable`); a group left with nothing removable is reported by
:meth:`Resolution.ungated`.

Modules
-------
This module loads policies and gathers the public names. The format is declared in
:mod:`gdp_graph.policy.schema` (checked by the generic :mod:`gdp_graph.policy.yamlcheck`), the
data model is :mod:`gdp_graph.policy.model`, the cross-field checks :mod:`gdp_graph.policy.build`,
matching and resolution :mod:`gdp_graph.policy.resolve`, and what ties groups and blocks
together (uniform sets, inner blocks) :mod:`gdp_graph.policy.structure`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from gdp_graph.policy.build import build_policy
from gdp_graph.policy.model import Policy, Rule, Selector
from gdp_graph.policy.resolve import (
    BlockSettings,
    GroupSettings,
    PolicyWarning,
    Resolution,
    max_removable,
    resolve,
)
from gdp_graph.policy.shipped import POLICY_DIR
from gdp_graph.policy.schema import (
    GDP_ONLY_KEYS,
    Defaults,
    EpsilonSchedule,
    LambdaController,
    Regularizer,
    Target,
    json_schema,
)
from gdp_graph.policy.yamlcheck import Diagnostic, Location, Node, Reporter, from_python, parse_yaml
from gdp_graph.policy.errors import PolicyError

__all__ = [
    "set_override",
    "GDP_ONLY_KEYS", "BlockSettings", "Defaults", "Diagnostic", "EpsilonSchedule", "GroupSettings",
    "LambdaController", "Location", "Policy", "PolicyError", "PolicyWarning", "Regularizer",
    "Resolution", "Rule", "Selector", "Target", "available_policies", "json_schema",
    "load_policy", "max_removable", "policy_from_dict", "resolve", "switch_regularizer",
]



def _reporter() -> Reporter:
    return Reporter(PolicyError, document="policy")


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
    return _load_text(path_or_text, source, name or source)


def _load_file(path: Path, source: str, name: Optional[str]) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([Diagnostic(Location(source), f"cannot read policy file: {exc}")]) \
            from exc
    return _load_text(text, source, name or path.stem)


def _load_text(text: str, source: str, name: str) -> Policy:
    """Parse and build a policy; a syntax error or an empty document raises at once."""
    rep = _reporter()
    root: Optional[Node] = parse_yaml(text, source, rep)
    if root is None:
        if not rep.diagnostics:
            rep.error(Location(source, 1, 1), "policy is empty; expected a mapping with at "
                      "least 'version: 1'")
        raise PolicyError(rep.diagnostics)
    return build_policy(root, rep, source, name)


def policy_from_dict(d: Mapping[str, Any], source: str = "<dict>", *,
                     name: Optional[str] = None) -> Policy:
    """Validate a plain dict exactly like a YAML file (positions are reported as ``0:0``; the
    messages name the key path)."""
    rep = _reporter()
    return build_policy(from_python(d, source, "", rep), rep, source, name or source)


def set_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``dotted.key=yaml-value`` override (``--set``) to a policy dict in place; the
    dict is validated afterwards by :func:`policy_from_dict` like any other."""
    import yaml
    path, sep, value = item.partition("=")
    if not sep or not path:
        raise PolicyError(f"--set {item!r}: expected KEY=VALUE, e.g. regularizer.init=magnitude")
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = yaml.safe_load(value)


def switch_regularizer(data: dict[str, Any], name: str) -> None:
    """Make a policy dict's regularizer the baseline ``name`` as published, in place: the keys of
    the previous regularizer (``t`` and :data:`GDP_ONLY_KEYS`) are dropped so the format's
    defaults apply, and GDP's budget hold, deadline and cost-scaled rates are switched off."""
    reg = data.setdefault("regularizer", {})
    reg["name"] = name
    for key in ("t", *GDP_ONLY_KEYS):
        reg.pop(key, None)
    reg["hold_budget"] = False
    reg["lr_by_cost"] = False
    reg.setdefault("lambda_controller", {})["deadline"] = False
