"""Strict checking of YAML (or plain Python) documents with precise, located diagnostics.

Generic: nothing here knows what document it checks. The pieces, one per module:

* :mod:`.diagnostics` -- :class:`Location` (``file:line:col``), :class:`Diagnostic`, the
  :class:`Reporter` that collects them, :class:`CheckError` that carries them all, and the
  phrase helpers (``did you mean`` suggestions in :func:`choices`);
* :mod:`.tree` -- :func:`parse_yaml` and :func:`from_python` build located :class:`Node` trees,
  reporting duplicate keys (which PyYAML silently accepts), unsupported tags and recursive
  aliases;
* :mod:`.specs` -- the declarative schema language (:class:`Struct`, :class:`Int`,
  :class:`Enum`, ...) that checks a tree into Python values, reporting types, ranges, enums and
  unknown keys, and exports a JSON Schema.

Example::

    rep = Reporter()
    node = parse_yaml("size: -1\\n", "example.yaml", rep)
    spec = Struct("example", {"size": Field(Int(minimum=0), "How many.", 1)})
    checked = spec.check(node, "", rep)
    rep.raise_if_any()
    # CheckError: example.yaml:1:7: size: -1 is out of range; expected an integer >= 0
"""

from gdp_graph.policy.yamlcheck.diagnostics import (
    CheckError,
    Diagnostic,
    Location,
    Reporter,
    choices,
    format_value,
    join_path,
    where,
)
from gdp_graph.policy.yamlcheck.specs import (
    INVALID,
    MISSING,
    Bool,
    Checked,
    Enum,
    Field,
    Int,
    Number,
    OneOrMany,
    Seq,
    Spec,
    Str,
    Struct,
    Variant,
)
from gdp_graph.policy.yamlcheck.tree import Entry, Node, describe_node, from_python, parse_yaml

__all__ = [
    "INVALID", "MISSING", "Bool", "CheckError", "Checked", "Diagnostic", "Entry", "Enum",
    "Field", "Int", "Location", "Node", "Number", "OneOrMany", "Reporter", "Seq", "Spec", "Str",
    "Struct", "Variant", "choices", "describe_node", "format_value", "from_python", "join_path",
    "parse_yaml", "where",
]
