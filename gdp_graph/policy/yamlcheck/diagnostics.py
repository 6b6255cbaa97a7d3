"""Where a problem is and how it is worded: locations, diagnostics, the reporter that collects
them, and the small phrase helpers every message shares.

Positions are 1-based. Input that has no positions (a Python dict) reports ``line 0, col 0``
and names the offending key path in the message instead.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class Location:
    """A position in a source; ``line``/``col`` are 1-based, 0 when unknown."""

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
    """One problem found in a document, printed as ``file:line:col: message``."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class CheckError(ValueError):
    """A document failed to load or validate.

    The message holds every problem found in the source, one per line, sorted by position, each
    starting with ``file:line:col:``. The individual problems are in :attr:`diagnostics`.
    Subclass it to name what failed (``PolicyError``); subclasses pickle as themselves.
    """

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        unique = list(dict.fromkeys(diagnostics))
        unique.sort(key=lambda d: (d.location.line, d.location.col))
        self.diagnostics: tuple[Diagnostic, ...] = tuple(unique)
        super().__init__("\n".join(str(d) for d in unique))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.diagnostics,))


class Reporter:
    """Collects diagnostics so that validation can report every problem at once.

    ``error_type`` is what :meth:`raise_if_any` raises; ``document`` is how messages name the
    root of the document (``policy: recursive YAML alias``).
    """

    def __init__(self, error_type: type[CheckError] = CheckError,
                 document: str = "document") -> None:
        self.diagnostics: list[Diagnostic] = []
        self.error_type = error_type
        self.document = document

    def error(self, location: Location, message: str) -> None:
        self.diagnostics.append(Diagnostic(location, message))

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise self.error_type(self.diagnostics)

    def name(self, path: str) -> str:
        """How a message names the value at ``path``: the path, or the document at the root."""
        return path or self.document


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
    return repr(value) if isinstance(value, (str, float)) else str(value)
