"""Strict checking of YAML (or plain Python) documents with precise, located diagnostics.

Generic: nothing here knows what document it checks. The pieces, one per module:

* :mod:`.diagnostics` -- :class:`Location` (``file:line:col``), :class:`Diagnostic`, the
  :class:`Reporter` that collects them, :class:`CheckError` that carries them all, and the
  phrase helpers (``did you mean`` suggestions in :func:`choices`);
* :mod:`.tree` -- :func:`parse_yaml` and :func:`from_python` build located :class:`Node` trees,
  reporting duplicate keys (which PyYAML silently accepts), unsupported tags and recursive
  aliases;
* :mod:`.specs` and :mod:`.structures` -- the declarative schema language (:class:`Struct`,
  :class:`Int`, :class:`Enum`, ...) that checks a tree into Python values, reporting types, ranges, enums and
  unknown keys, and exports a JSON Schema.

Example::

    rep = Reporter()
    node = parse_yaml("size: -1\\n", "example.yaml", rep)
    spec = Struct("example", {"size": Field(Int(minimum=0), "How many.", 1)})
    checked = spec.check(node, "", rep)
    rep.raise_if_any()
    # CheckError: example.yaml:1:7: size: -1 is out of range; expected an integer >= 0

Why not pydantic (evaluated 2026-12 with pydantic 2.13, strict models, errors mapped back to
the YAML marks through their ``loc``): a third of the malformed-policy corpus never reaches a
validator (syntax errors, duplicate keys, tags, recursive aliases, alias bombs: the located
tree above is needed either way), and on the rest pydantic's messages were less precise, never
more:

* strict mode refuses ``max_fraction: 5e-1`` ("Input should be a valid number": YAML 1.1 reads
  a plain ``5e-1`` as text), lax mode accepts the quoted ``"0.5"`` the corpus must refuse; the
  rule "a plain scalar that reads as a number is one" needs this layer anyway;
* an unknown key gets "Extra inputs are not permitted", without the ``did you mean`` and the
  allowed keys;
* a cross-field check raised in a model validator is located at the section
  (``regularizer.epsilon``), not at the offending key (``start``, line and column);
* ``level: block`` in a group rule loses its hint (only valid in block rules), and a boolean
  for an integer says "valid integer" rather than naming the boolean it got.

So the checker stays; the JSON Schema is exported from the same specs (``Spec.json_schema``).
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
from gdp_graph.policy.yamlcheck.specs import INVALID, MISSING, Bool, Enum, Int, Number, Spec, Str
from gdp_graph.policy.yamlcheck.structures import Checked, Field, OneOrMany, Seq, Struct, Variant
from gdp_graph.policy.yamlcheck.tree import Entry, Node, describe_node, from_python, parse_yaml

__all__ = [
    "INVALID", "MISSING", "Bool", "CheckError", "Checked", "Diagnostic", "Entry", "Enum",
    "Field", "Int", "Location", "Node", "Number", "OneOrMany", "Reporter", "Seq", "Spec", "Str",
    "Struct", "Variant", "choices", "describe_node", "format_value", "from_python", "join_path",
    "parse_yaml", "where",
]
