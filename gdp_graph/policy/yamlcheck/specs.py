"""A small declarative schema language for located trees.

A :class:`Spec` checks a :class:`~gdp_graph.policy.yamlcheck.tree.Node` into a Python value, reporting
every problem (wrong type, out of range, unknown key with a "did you mean", missing key) to a
:class:`~gdp_graph.policy.yamlcheck.diagnostics.Reporter`, and returns :data:`INVALID` where it found
one, so that checking goes on and every problem is reported at once. The same declaration
exports a JSON Schema (:meth:`Spec.json_schema`) for editors.

Here: the base :class:`Spec` and the scalars :class:`Int`, :class:`Number`, :class:`Bool`,
:class:`Enum`, :class:`Str`; the collections are in :mod:`.structures`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from gdp_graph.policy.yamlcheck.diagnostics import Reporter, choices, format_value
from gdp_graph.policy.yamlcheck.tree import Node, describe_node


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
