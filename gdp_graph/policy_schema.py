"""Schema machinery for pruning policies: located YAML trees, a small declarative schema
language, strict validation with precise diagnostics, and JSON Schema export.

The policy format itself (which keys exist, their types, ranges, defaults and documentation) is
declared once, at the bottom of this module, as :data:`POLICY_SPEC`. The same declaration drives

* validation (:meth:`Spec.check`): every problem becomes a :class:`Diagnostic` that names
  ``file:line:col`` and, where it helps, the allowed values and a "did you mean" suggestion;
* the JSON Schema shipped for editors (:func:`json_schema`, written to
  ``gdp_graph/policies/schema.json`` by ``python -m gdp_graph.policy_schema``);
* the defaults of the typed settings dataclasses (:class:`Target`, :class:`Regularizer`, ...),
  whose class attributes are the single source of every default value.

Cross-field rules (epsilon ``start > end``, regularizer-specific keys, contradictory rules) are
checked by :mod:`gdp_graph.policy`, which builds the final :class:`~gdp_graph.policy.Policy`.

Positions are 1-based. Input that has no positions (a Python dict) reports ``line 0, col 0``
and names the offending key path in the message instead.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

# --------------------------------------------------------------------------------------------
# Locations, diagnostics, the one exception
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A position in a policy source; ``line``/``col`` are 1-based, 0 when unknown."""

    source: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.col}"

    @property
    def file_line(self) -> str:
        """``source:line``, the short form used in resolution reasons."""
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a policy, printed as ``file:line:col: message``."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class PolicyError(ValueError):
    """A policy failed to load or validate.

    The message holds every problem found in the source, one per line, sorted by position, each
    starting with ``file:line:col:``. The individual problems are in :attr:`diagnostics`.
    """

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        unique = list(dict.fromkeys(diagnostics))
        unique.sort(key=lambda d: (d.location.line, d.location.col))
        self.diagnostics: tuple[Diagnostic, ...] = tuple(unique)
        super().__init__("\n".join(str(d) for d in unique))

    def __reduce__(self) -> tuple[Any, ...]:
        return (PolicyError, (self.diagnostics,))


class Reporter:
    """Collects diagnostics so that validation can report every problem at once."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def error(self, location: Location, message: str) -> None:
        self.diagnostics.append(Diagnostic(location, message))

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise PolicyError(self.diagnostics)


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


INVALID: Any = _Sentinel("INVALID")  #: returned by a check that reported an error
MISSING: Any = _Sentinel("MISSING")  #: a field without a default


def join_path(path: str, key: str) -> str:
    """``defaults`` + ``level`` -> ``defaults.level``; the root path is empty."""
    return f"{path}.{key}" if path else key


def where(path: str) -> str:
    """How a message names a mapping: ``in defaults`` or ``at top level``."""
    return f"in {path}" if path else "at top level"


def choices(word: str, allowed: Sequence[str]) -> str:
    """``(did you mean 'x'? allowed: a, b)`` or ``(allowed: a, b)``."""
    lowered = {a.lower(): a for a in allowed}
    close = [lowered[word.lower()]] if word.lower() in lowered else []
    close = close or difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    listing = ", ".join(allowed)
    if close:
        return f"(did you mean '{close[0]}'? allowed: {listing})"
    return f"(allowed: {listing})"


def format_value(value: Any) -> str:
    """A value the way YAML would spell it (``true``, ``0.5``, ``'x'``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return repr(value) if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# Located trees: YAML nodes or Python objects, with positions
# --------------------------------------------------------------------------------------------


@dataclass
class Node:
    """A located value: ``kind`` is ``map`` (``value``: dict of :class:`Entry`), ``seq``
    (list of :class:`Node`), ``scalar`` (a Python scalar) or ``bad`` (already reported)."""

    kind: str
    value: Any
    location: Location
    plain: bool = False  #: an unquoted YAML scalar (``1e-4`` is a plain string in YAML 1.1)


@dataclass
class Entry:
    """A mapping entry: where its key is, and its value."""

    key_location: Location
    node: Node


_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "invalid YAML"
    context = exc.context or ""
    start, mark = exc.context_mark, exc.problem_mark
    if context and start is not None and mark is not None and start.line != mark.line:
        context += f" started at line {start.line + 1}, column {start.column + 1}"
    if context and problem.startswith("but "):
        return f"YAML syntax error: {context}, {problem}"
    if context:
        return f"YAML syntax error: {problem} ({context})"
    return f"YAML syntax error: {problem}"


def parse_yaml(text: str, source: str, rep: Reporter) -> Optional[Node]:
    """Compose ``text`` into a located tree; ``None`` for an empty document or a syntax error
    (reported with its position)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        rep.error(Location(source, line, col), _syntax_message(exc))
        return None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        rep.error(Location(source, line, col), f"YAML syntax error: {exc.reason} ({char!r})")
        return None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML parse error is marked
        rep.error(Location(source, 1, 1), f"YAML syntax error: {exc}")
        return None
    return None if root is None else _YamlBuilder(source, rep).build(root, "")


class _YamlBuilder:
    """Turns composed PyYAML nodes into :class:`Node` trees, detecting duplicate keys (which
    PyYAML silently accepts), unsupported tags and recursive aliases; handles ``<<`` merges."""

    def __init__(self, source: str, rep: Reporter) -> None:
        self.source = source
        self.rep = rep
        self.constructor = yaml.constructor.SafeConstructor()
        self.active: set[int] = set()

    _COLLECTION_TAGS = {MappingNode: _TAG + "map", SequenceNode: _TAG + "seq"}

    def location(self, ynode: yaml.Node) -> Location:
        mark = ynode.start_mark
        return Location(self.source, mark.line + 1, mark.column + 1)

    def build(self, ynode: yaml.Node, path: str) -> Node:
        if id(ynode) in self.active:
            self.rep.error(self.location(ynode), f"{path or 'policy'}: recursive YAML alias")
            return Node("bad", None, self.location(ynode))
        self.active.add(id(ynode))
        try:
            wanted_tag = self._COLLECTION_TAGS.get(type(ynode))
            if wanted_tag is not None and ynode.tag != wanted_tag:
                return self.unsupported(ynode, path)
            if isinstance(ynode, MappingNode):
                return self.mapping(ynode, path)
            if isinstance(ynode, SequenceNode):
                items = [self.build(v, f"{path}[{i}]") for i, v in enumerate(ynode.value)]
                return Node("seq", items, self.location(ynode))
            return self.scalar(ynode, path)
        finally:
            self.active.discard(id(ynode))

    def scalar(self, ynode: ScalarNode, path: str) -> Node:
        loc, plain = self.location(ynode), ynode.style is None
        if ynode.tag == _TAG + "timestamp" and plain:  # a date is just text in a policy
            return Node("scalar", ynode.value, loc, plain)
        if ynode.tag not in _SCALAR_TAGS:
            return self.unsupported(ynode, path)
        return Node("scalar", self.constructor.construct_object(ynode, deep=True), loc, plain)

    def unsupported(self, ynode: yaml.Node, path: str) -> Node:
        loc, tag = self.location(ynode), ynode.tag.replace(_TAG, "!!")
        self.rep.error(loc, f"{path or 'policy'}: unsupported YAML tag '{tag}' (only mappings, "
                       "lists, strings, numbers, booleans and null are allowed)")
        return Node("bad", None, loc)

    def mapping(self, ynode: MappingNode, path: str) -> Node:
        entries: dict[str, Entry] = {}
        merged: dict[str, Entry] = {}
        for knode, vnode in ynode.value:
            if knode.tag == _TAG + "merge":
                self.merge(vnode, path, merged)
                continue
            kloc = self.location(knode)
            if not isinstance(knode, ScalarNode):
                self.rep.error(kloc, f"keys must be plain strings {where(path)}")
                continue
            key = str(knode.value)
            if key in entries:
                first = entries[key].key_location.line
                self.rep.error(kloc, f"duplicate key '{key}' {where(path)} (first defined at "
                               f"line {first}; YAML would silently keep only the last one)")
            entries[key] = Entry(kloc, self.build(vnode, join_path(path, key)))
        for key, entry in merged.items():
            entries.setdefault(key, entry)
        return Node("map", entries, self.location(ynode))

    def merge(self, vnode: yaml.Node, path: str, merged: dict[str, Entry]) -> None:
        sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
        for src in sources:
            if not isinstance(src, MappingNode):
                self.rep.error(self.location(src), f"'<<' {where(path)} must merge a mapping "
                               "or a list of mappings")
                continue
            for key, entry in self.mapping(src, path).value.items():
                merged.setdefault(key, entry)


def from_python(obj: Any, source: str, path: str, rep: Reporter) -> Node:
    """Wrap a plain Python structure (dicts, lists, scalars) as a tree without positions."""
    loc = Location(source)
    if isinstance(obj, Mapping):
        entries: dict[str, Entry] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                rep.error(loc, f"keys must be strings {where(path)}, got {key!r}")
                continue
            entries[key] = Entry(loc, from_python(value, source, join_path(path, key), rep))
        return Node("map", entries, loc)
    if isinstance(obj, (list, tuple)):
        return Node("seq", [from_python(v, source, f"{path}[{i}]", rep)
                            for i, v in enumerate(obj)], loc)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return Node("scalar", obj, loc)
    rep.error(loc, f"{path or 'policy'}: unsupported value of type {type(obj).__name__}")
    return Node("bad", None, loc)


def describe_node(node: Node) -> str:
    """``a boolean (true)``, ``a string ('x')``, ``a mapping``: what a value is, for messages."""
    value = node.value
    if node.kind == "map":
        return "a mapping"
    if node.kind == "seq":
        return "a list"
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return f"a boolean ({format_value(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------------------------
# The schema language
# --------------------------------------------------------------------------------------------


class Spec:
    """A value's type. :meth:`check` converts a located node into a Python value, reporting
    every problem and returning :data:`INVALID` when it found one."""

    def check(self, node: Node, path: str, rep: Reporter) -> Any:
        raise NotImplementedError

    def expected(self) -> str:
        """What the value should be, for messages (``an integer >= 0``)."""
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def wrong_type(self, node: Node, path: str, rep: Reporter) -> Any:
        if node.kind != "bad":
            rep.error(node.location, f"{path or 'top level'}: expected {self.expected()}, "
                      f"got {describe_node(node)}")
        return INVALID


def _bound(value: float) -> Any:
    return int(value) if float(value).is_integer() and abs(value) < 1e15 else value


@dataclass(frozen=True)
class _Numeric(Spec):
    """Shared range handling of :class:`Int` and :class:`Number`."""

    minimum: Optional[float] = None
    maximum: Optional[float] = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    range_message: Optional[str] = None  #: replaces the generic message; ``{value}`` is filled

    noun = "a number"

    def range_text(self) -> str:
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            left = "(" if self.exclusive_minimum else "["
            right = ")" if self.exclusive_maximum else "]"
            return f" in {left}{_bound(lo)}, {_bound(hi)}{right}"
        if lo is not None:
            return f" {'>' if self.exclusive_minimum else '>='} {_bound(lo)}"
        if hi is not None:
            return f" {'<' if self.exclusive_maximum else '<='} {_bound(hi)}"
        return ""

    def expected(self) -> str:
        if self.minimum is not None and self.minimum == self.maximum:
            return f"{self.noun} equal to {_bound(self.minimum)}"
        return self.noun + self.range_text()

    def in_range(self, value: float) -> bool:
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value <= lo if self.exclusive_minimum else value < lo):
            return False
        return not (hi is not None and (value >= hi if self.exclusive_maximum else value > hi))

    def ranged(self, value: Any, node: Node, path: str, rep: Reporter) -> Any:
        if self.in_range(value):
            return value
        if self.range_message:
            rep.error(node.location, f"{path}: " + self.range_message.format(value=value))
        else:
            rep.error(node.location, f"{path}: {format_value(value)} is out of range; expected "
                      f"{self.expected()}")
        return INVALID

    def bounds_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.minimum is not None:
            out["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = _bound(self.minimum)
        if self.maximum is not None:
            out["exclusiveMaximum" if self.exclusive_maximum else "maximum"] = _bound(self.maximum)
        return out


@dataclass(frozen=True)
class Int(_Numeric):
    """An integer; booleans are rejected even though Python treats them as ints."""

    noun = "an integer"

    def check(self, node: Node, path: str, rep: Reporter) -> Any:
        value = node.value
        if node.kind != "scalar" or isinstance(value, bool) or not isinstance(value, int):
            return self.wrong_type(node, path, rep)
        return self.ranged(value, node, path, rep)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "integer", **self.bounds_schema()}


_NUMERIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass(frozen=True)
class Number(_Numeric):
    """A finite real number; integers are accepted, booleans are not. An unquoted YAML scalar
    such as ``1e-4`` (a string under YAML 1.1, which wants ``1.0e-4``) is read as a number."""

    def check(self, node: Node, path: str, rep: Reporter) -> Any:
        value = node.value
        if node.kind == "scalar" and node.plain and isinstance(value, str) \
                and _NUMERIC.fullmatch(value):
            value = float(value)
        if node.kind != "scalar" or isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.wrong_type(node, path, rep)
        if not math.isfinite(value):
            rep.error(node.location, f"{path}: expected a finite number, got {value}")
            return INVALID
        value = self.ranged(value, node, path, rep)
        return value if value is INVALID else float(value)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "number", **self.bounds_schema()}


@dataclass(frozen=True)
class Bool(Spec):
    """``true`` or ``false`` (YAML 1.1 also reads ``yes``/``no``/``on``/``off``)."""

    def check(self, node: Node, path: str, rep: Reporter) -> Any:
        if node.kind != "scalar" or not isinstance(node.value, bool):
            return self.wrong_type(node, path, rep)
        return node.value

    def expected(self) -> str:
        return "a boolean (true or false)"

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Enum(Spec):
    """One string out of ``values``; ``hints`` adds advice for tempting wrong values."""

    values: tuple[str, ...]
    hints: Mapping[str, str] = field(default_factory=dict)

    def check(self, node: Node, path: str, rep: Reporter) -> Any:
        value = node.value
        if node.kind != "scalar" or not isinstance(value, str):
            return self.wrong_type(node, path, rep)
        if value in self.values:
            return value
        hint = self.hints.get(value)
        detail = f"; {hint}" if hint else ""
        rep.error(node.location, f"{path}: invalid value {value!r}{detail} "
                  f"{choices(value, self.values)}")
        return INVALID

    def expected(self) -> str:
        return "one of " + ", ".join(self.values)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Str(Spec):
    """A non-empty string. ``kind`` adds a check: ``glob`` (shell pattern), ``regex`` (must
    compile), ``identifier`` (a class name such as ``Conv2d``) or ``text`` (none)."""

    kind: str = "text"

    def check(self, node: Node, path: str, rep: Reporter) -> Any:
        value = node.value
        if node.kind != "scalar" or not isinstance(value, str):
            return self.wrong_type(node, path, rep)
        if not value:
            rep.error(node.location, f"{path}: expected {self.expected()}, got an empty string")
            return INVALID
        problem = self.problem(value)
        if problem:
            rep.error(node.location, f"{path}: {problem}")
            return INVALID
        return value

    def problem(self, value: str) -> Optional[str]:
        if self.kind == "regex":
            try:
                re.compile(value)
            except re.error as exc:
                return f"invalid regular expression {value!r}: {exc.msg} at position {exc.pos}"
        if self.kind == "identifier" and not _IDENTIFIER.fullmatch(value):
            last = value.rsplit(".", 1)[-1]
            if "." in value and _IDENTIFIER.fullmatch(last):
                return f"{value!r} is not a class name; write the bare name '{last}'"
            return f"{value!r} is not a class name (expected something like 'Conv2d')"
        return None

    def expected(self) -> str:
        return {"glob": "a glob pattern", "regex": "a regular expression",
                "identifier": "a module class name"}.get(self.kind, "a string")

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "minLength": 1}
        if self.kind == "regex":
            out["format"] = "regex"
        if self.kind == "identifier":
            out["pattern"] = "^" + _IDENTIFIER.pattern + "$"
        return out


@dataclass(frozen=True)
class OneOrMany(Spec):
    """A single ``item`` or a non-empty list of them (list means OR); checked into a tuple."""

    item: Spec

    def check(self, node: Node, path: str, rep: Reporter) -> Any:
        if node.kind == "map":
            return self.wrong_type(node, path, rep)
        if node.kind != "seq":
            value = self.item.check(node, path, rep)
            return INVALID if value is INVALID else (value,)
        if not node.value:
            rep.error(node.location, f"{path}: empty list; it would match nothing (give "
                      f"{self.item.expected()} or a list of them)")
            return INVALID
        values = [self.item.check(n, f"{path}[{i}]", rep) for i, n in enumerate(node.value)]
        return INVALID if INVALID in values else tuple(dict.fromkeys(values))

    def expected(self) -> str:
        return f"{self.item.expected()} or a list of them"

    def json_schema(self) -> dict[str, Any]:
        item = self.item.json_schema()
        return {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}


@dataclass(frozen=True)
class Field:
    """A mapping key: its type, documentation, default, and Python attribute name."""

    spec: Spec
    doc: str
    default: Any = MISSING
    attr: Optional[str] = None  #: the dataclass attribute, when it differs from the key


@dataclass
class Checked:
    """A validated mapping: the values that passed, every known entry, and where it was."""

    values: dict[str, Any]
    entries: dict[str, Entry]
    location: Location
    node: Node
    variant: Optional[str] = None

    def value_location(self, key: str) -> Location:
        entry = self.entries.get(key)
        return entry.node.location if entry else self.location

    def key_location(self, key: str) -> Location:
        entry = self.entries.get(key)
        return entry.key_location if entry else self.location

    def sub(self, key: str) -> Optional["Checked"]:
        value = self.values.get(key)
        return value if isinstance(value, Checked) else None


@dataclass(frozen=True)
class Struct(Spec):
    """A mapping with a fixed set of keys; unknown keys are errors (with suggestions)."""

    title: str
    fields: Mapping[str, Field]
    doc: str = ""
    required: tuple[str, ...] = ()
    nullable: bool = False  #: ``key:`` with nothing after it counts as an empty mapping

    def check(self, node: Node, path: str, rep: Reporter,
              explain_unknown: Optional[Callable[[str], Optional[str]]] = None) -> Any:
        if self.nullable and node.kind == "scalar" and node.value is None:
            return Checked({}, {}, node.location, node)
        if node.kind != "map":
            return self.wrong_type(node, path, rep)
        values: dict[str, Any] = {}
        entries: dict[str, Entry] = {}
        for key, entry in node.value.items():
            spec_field = self.fields.get(key)
            if spec_field is None:
                special = explain_unknown(key) if explain_unknown else None
                rep.error(entry.key_location, special or f"unknown key '{key}' {where(path)} "
                          f"{choices(key, list(self.fields))}")
                continue
            entries[key] = entry
            value = spec_field.spec.check(entry.node, join_path(path, key), rep)
            if value is not INVALID:
                values[key] = value
        for key in self.required:
            if key not in node.value:
                default = self.fields[key].default
                example = "" if default is MISSING else f" (add '{key}: {format_value(default)}')"
                rep.error(node.location, f"missing required key '{key}' {where(path)}{example}")
        return Checked(values, entries, node.location, node)

    def expected(self) -> str:
        return f"a mapping ({self.title})"

    def json_schema(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for key, spec_field in self.fields.items():
            prop = {"description": spec_field.doc, **spec_field.spec.json_schema()}
            if spec_field.default is not MISSING:
                prop["default"] = spec_field.default
            props[key] = prop
        out: dict[str, Any] = {"type": ["object", "null"] if self.nullable else "object"}
        if self.doc:
            out["description"] = self.doc
        out["properties"] = props
        if self.required:
            out["required"] = list(self.required)
        out["additionalProperties"] = False
        return out


@dataclass(frozen=True)
class Variant(Spec):
    """A mapping whose shape is chosen by which discriminating key it has: ``options`` maps
    that key to ``(label, Struct)``. Exactly one discriminating key must be present."""

    what: str
    options: Mapping[str, tuple[str, Struct]]

    def check(self, node: Node, path: str, rep: Reporter) -> Any:
        if node.kind != "map":
            return self.wrong_type(node, path, rep)
        present = [k for k in self.options if k in node.value]
        if not present:
            rep.error(node.location, f"{path}: a {self.what} needs {self.alternatives()}")
            return INVALID
        if len(present) > 1:
            both = " and ".join(f"'{k}'" for k in present)
            rep.error(node.location, f"{path}: a {self.what} cannot have both {both}; it "
                      f"needs exactly one: {self.alternatives()}")
            return INVALID
        label, struct = self.options[present[0]]
        checked = struct.check(node, path, rep, lambda key: self.foreign(key, present[0], path))
        if checked is not INVALID:
            checked.variant = label
        return checked

    def alternatives(self) -> str:
        return " or ".join(f"'{k}' (a {label} {self.what})"
                           for k, (label, _) in self.options.items())

    def foreign(self, key: str, chosen: str, path: str) -> Optional[str]:
        """A message for a key that is valid in another variant but not in this one."""
        label, own = self.options[chosen]
        for other, (other_label, struct) in self.options.items():
            if other != chosen and key in struct.fields and key not in own.fields:
                return (f"{path}: key '{key}' is not allowed in a {label} {self.what} (one with "
                        f"'{chosen}:'); it only applies to {other_label} {self.what}s (with "
                        f"'{other}:'). Allowed here: {', '.join(own.fields)}")
        return None

    def expected(self) -> str:
        return f"a mapping ({self.what})"

    def json_schema(self) -> dict[str, Any]:
        variants = []
        for key, (_, struct) in self.options.items():
            schema = struct.json_schema()
            schema["required"] = [key] + [k for k in schema.get("required", []) if k != key]
            variants.append(schema)
        return {"type": "object", "oneOf": variants}


@dataclass(frozen=True)
class Seq(Spec):
    """A list of ``item``; checked into a list holding :data:`INVALID` for failed items."""

    item: Spec
    nullable: bool = False

    def check(self, node: Node, path: str, rep: Reporter) -> Any:
        if self.nullable and node.kind == "scalar" and node.value is None:
            return []
        if node.kind != "seq":
            return self.wrong_type(node, path, rep)
        return [self.item.check(n, f"{path}[{i}]", rep) for i, n in enumerate(node.value)]

    def expected(self) -> str:
        return f"a list of {self.item.expected()}"

    def json_schema(self) -> dict[str, Any]:
        return {"type": ["array", "null"] if self.nullable else "array",
                "items": self.item.json_schema()}


# --------------------------------------------------------------------------------------------
# Typed settings: their class attributes are the defaults the schema documents
# --------------------------------------------------------------------------------------------

VERSION = 1
METRICS = ("flops", "params")
REGULARIZERS = ("gdp", "polarization", "l1")
CONTROLLERS = ("proportional", "constant")
SCHEDULES = ("exponential", "linear", "cosine")
STEPS = ("iteration", "epoch")
GROUP_LEVELS = ("channel", "none")
BLOCK_LEVELS = ("block", "none")
UNITS = ("channel", "head", "norm-group", "conv-group", "channel-block")
COUPLINGS = ("residual", "concat", "split", "depthwise", "grouped", "attention", "multiply",
             "flatten", "shuffle", "norm")
DEFAULT_T = 1.2  #: polarization ``t`` when the policy does not set it


@dataclass(frozen=True)
class Target:
    """How much of the model to keep."""

    metric: str = "flops"
    fraction: float = 0.5
    tolerance: float = 0.02


@dataclass(frozen=True)
class LambdaController:
    """How the regularization strength is steered towards the target.

    ``proportional``: after every ``step``, ``lambda <- clamp(lambda * exp(gain * e), min, max)``
    with ``e = (kept - target.fraction) / target.fraction``, ``kept`` being the fraction of the
    original metric that the current hard gate count (gates >= threshold) keeps. ``constant``:
    lambda never changes (``gain``/``min``/``max``/``step`` are not allowed).
    """

    kind: str = "proportional"
    gain: float = 0.01
    min: float = 0.0
    max: float = 1.0e-2
    step: str = "iteration"


@dataclass(frozen=True)
class EpsilonSchedule:
    """The GDP smoothing constant, annealed from ``start`` down to ``end`` (``start > end > 0``)."""

    start: float = 1.0
    end: float = 1.0e-8
    schedule: str = "exponential"
    step: str = "iteration"

    def value(self, progress: float) -> float:
        """Epsilon after a fraction ``progress`` in [0, 1] of training."""
        p = min(max(progress, 0.0), 1.0)
        if self.schedule == "linear":
            return self.start + (self.end - self.start) * p
        if self.schedule == "cosine":
            return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * p)) / 2.0
        return self.start * (self.end / self.start) ** p


@dataclass(frozen=True)
class Regularizer:
    """The sparsity regularizer on the gates. ``epsilon`` is set only for ``gdp`` and ``t``
    only for ``polarization``."""

    name: str = "gdp"
    lambda_: float = 1.0e-4
    lambda_controller: LambdaController = field(default_factory=LambdaController)
    epsilon: Optional[EpsilonSchedule] = field(default_factory=EpsilonSchedule)
    t: Optional[float] = None
    threshold: float = 1.0e-6


@dataclass(frozen=True)
class Defaults:
    """Settings of every group and block that no rule overrides."""

    level: str = "channel"
    block_level: str = "none"
    min_channels: int = 1
    round_to: int = 1
    max_fraction: float = 0.9
    allow_inexact: bool = False


# --------------------------------------------------------------------------------------------
# The policy format
# --------------------------------------------------------------------------------------------

_LEVEL_DOC = "channel: gate the group's units; none: no gates (the group is kept whole)."
_BLOCK_HINT = "'block' is only valid in block rules (rules with 'blocks:')"
_CHANNEL_HINT = "'channel' is only valid for groups (defaults.level or rules with 'match:')"

MIN_CHANNELS = Field(Int(minimum=0), "Units (channels, heads, ...) always kept in a group.",
                     Defaults.min_channels)
ROUND_TO = Field(Int(minimum=1), "The kept unit count is rounded to a multiple of this "
                 "(unless the group is kept whole).", Defaults.round_to)
MAX_FRACTION = Field(Number(minimum=0, maximum=1), "Largest fraction of a group's units that "
                     "may be removed.", Defaults.max_fraction)
ALLOW_INEXACT = Field(Bool(), "Also gate groups whose removal is inexact (LayerNorm, softmax or "
                      "a mean over the channels).", Defaults.allow_inexact)

TARGET_SPEC = Struct("target", {
    "metric": Field(Enum(METRICS), "What the budget counts.", Target.metric),
    "fraction": Field(Number(minimum=0, maximum=1, exclusive_minimum=True),
                      "Fraction of the ORIGINAL metric to keep.", Target.fraction),
    "tolerance": Field(Number(minimum=0, maximum=1), "Accepted overshoot above fraction "
                       "(same units).", Target.tolerance),
}, doc="How much of the model to keep.", nullable=True)

CONTROLLER_SPEC = Struct("lambda controller", {
    "kind": Field(Enum(CONTROLLERS), "proportional: lambda <- clamp(lambda * exp(gain * e), min, "
                  "max) with e the relative excess of the kept metric over the target; "
                  "constant: lambda is fixed.", LambdaController.kind),
    "gain": Field(Number(minimum=0, exclusive_minimum=True), "proportional only: how fast lambda "
                  "reacts.", LambdaController.gain),
    "min": Field(Number(minimum=0), "proportional only: lower bound of lambda.",
                 LambdaController.min),
    "max": Field(Number(minimum=0, exclusive_minimum=True), "proportional only: upper bound of "
                 "lambda.", LambdaController.max),
    "step": Field(Enum(STEPS), "proportional only: how often lambda is updated.",
                  LambdaController.step),
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
}, doc="The sparsity regularizer on the gates.", nullable=True)

DEFAULTS_SPEC = Struct("defaults", {
    "level": Field(Enum(GROUP_LEVELS, {"block": _BLOCK_HINT + "; use block_level for blocks"}),
                   "Groups: " + _LEVEL_DOC, Defaults.level),
    "block_level": Field(Enum(BLOCK_LEVELS, {"channel": _CHANNEL_HINT}), "Removable residual "
                         "blocks: block gates the whole branch; none: no block gate.",
                         Defaults.block_level),
    "min_channels": MIN_CHANNELS,
    "round_to": ROUND_TO,
    "max_fraction": MAX_FRACTION,
    "allow_inexact": ALLOW_INEXACT,
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
    "level": Field(Enum(GROUP_LEVELS, {"block": _BLOCK_HINT}), _LEVEL_DOC),
    "min_channels": Field(MIN_CHANNELS.spec, MIN_CHANNELS.doc),
    "round_to": Field(ROUND_TO.spec, ROUND_TO.doc),
    "max_fraction": Field(MAX_FRACTION.spec, MAX_FRACTION.doc),
    "allow_inexact": Field(ALLOW_INEXACT.spec, ALLOW_INEXACT.doc),
}, doc="Overrides settings of the channel groups it matches.")

BLOCK_RULE_SPEC = Struct("block rule", {
    "blocks": Field(BLOCK_SELECTOR_SPEC, "Which removable blocks the rule applies to."),
    "name": RULE_NAME,
    "level": Field(Enum(BLOCK_LEVELS, {"channel": _CHANNEL_HINT}), "block: gate the whole "
                   "branch; none: no block gate."),
}, doc="Overrides the block level of the removable blocks it matches.")

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
}, doc="A gdp-graph pruning policy (GDP: gates with differentiable polarization). Cross-field "
       "constraints (epsilon start > end, keys specific to one regularizer, contradictory rules) "
       "are checked by gdp-graph itself.", required=("version",))

SCHEMA_PATH = Path(__file__).resolve().parent / "policies" / "schema.json"


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the policy format, for editors."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "gdp-graph pruning policy", **POLICY_SPEC.json_schema()}


def json_schema_text() -> str:
    """:func:`json_schema` as the exact text of ``policies/schema.json``."""
    return json.dumps(json_schema(), indent=2) + "\n"


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    """Regenerate the shipped ``schema.json`` (``python -m gdp_graph.policy_schema``)."""
    path.write_text(json_schema_text(), encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover
    print(write_json_schema())
