"""Collection specs: :class:`OneOrMany`, :class:`Seq`, :class:`Struct` (a mapping with fixed
keys, each a :class:`Field`, checked into a :class:`Checked`) and :class:`Variant` (a mapping
whose shape is chosen by a discriminating key). See :mod:`.specs` for the scalars."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from gdp_graph.policy.yamlcheck.diagnostics import Location, Reporter, choices, format_value, join_path, where
from gdp_graph.policy.yamlcheck.tree import Entry, Node


from gdp_graph.policy.yamlcheck.specs import INVALID, MISSING, Spec


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
