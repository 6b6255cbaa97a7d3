"""Located trees: a YAML document or a plain Python structure turned into :class:`Node` values
that know where they were written.

PyYAML silently keeps the last of two equal keys; :func:`parse_yaml` reports the duplicate
instead, and refuses tags other than plain mappings, lists and scalars, and recursive aliases.
``<<`` merge keys are honoured (explicit keys win over merged ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from gdp_graph.policy.yamlcheck.diagnostics import Location, Reporter, format_value, join_path, where


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
    if root is None:
        return None
    size = expanded_size(root, MAX_EXPANDED_NODES)
    if size > MAX_EXPANDED_NODES:
        mark = root.start_mark
        rep.error(Location(source, mark.line + 1, mark.column + 1),
                  f"the document expands to more than {MAX_EXPANDED_NODES:,} values through YAML "
                  "aliases (an alias bomb?); refused")
        return None
    return _YamlBuilder(source, rep).build(root, "")


#: far beyond any real document of this kind, far below what exhausts memory or time
MAX_EXPANDED_NODES = 100_000


def expanded_size(root: yaml.Node, limit: int) -> int:
    """How many nodes ``root`` has once every alias is expanded, counted on the composed graph
    (aliases share nodes, so this is linear in the text); stops counting past ``limit``.
    Recursive aliases count once (the builder reports them)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = 1  # provisional: a recursive alias meets itself here
        total = 1
        if isinstance(node, MappingNode):
            children = [c for pair in node.value for c in pair]
        elif isinstance(node, SequenceNode):
            children = node.value
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[key] = total
        return total

    return size(root)


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
            self.rep.error(self.location(ynode), f"{self.rep.name(path)}: recursive YAML alias")
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
        if ynode.tag == _TAG + "timestamp" and plain:  # a date is just text here
            return Node("scalar", ynode.value, loc, plain)
        if ynode.tag not in _SCALAR_TAGS:
            return self.unsupported(ynode, path)
        return Node("scalar", self.constructor.construct_object(ynode, deep=True), loc, plain)

    def unsupported(self, ynode: yaml.Node, path: str) -> Node:
        loc, tag = self.location(ynode), ynode.tag.replace(_TAG, "!!")
        self.rep.error(loc, f"{self.rep.name(path)}: unsupported YAML tag '{tag}' (only "
                       "mappings, lists, strings, numbers, booleans and null are allowed)")
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
    rep.error(loc, f"{rep.name(path)}: unsupported value of type {type(obj).__name__}")
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
