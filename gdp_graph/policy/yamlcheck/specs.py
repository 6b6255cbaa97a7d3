"""A small declarative schema language for located trees.

A :class:`Spec` checks a :class:`~gdp_graph.policy.yamlcheck.tree.Node` into a Python value, reporting
every problem (wrong type, out of range, unknown key with a "did you mean", missing key) to a
:class:`~gdp_graph.policy.yamlcheck.diagnostics.Reporter`, and returns :data:`INVALID` where it found
one, so that checking goes on and every problem is reported at once. The same declaration
exports a JSON Schema (:meth:`Spec.json_schema`) for editors.

Scalars: :class:`Int`, :class:`Number`, :class:`Bool`, :class:`Enum`, :class:`Str`;
collections: :class:`OneOrMany`, :class:`Seq`, :class:`Struct` (a mapping with fixed keys, each a
:class:`Field`, checked into a :class:`Checked`) and :class:`Variant` (a mapping whose shape is
chosen by a discriminating key).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from gdp_graph.policy.yamlcheck.diagnostics import Location, Reporter, choices, format_value, join_path, where
from gdp_graph.policy.yamlcheck.tree import Entry, Node, describe_node


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


INVALID: Any = _Sentinel("INVALID")  #: returned by a check that reported an error
MISSING: Any = _Sentinel("MISSING")  #: a field without a default


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
