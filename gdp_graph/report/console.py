"""The rich console every report prints to.

Its strings are never read as markup (``markup=False``, ``emoji=False``): messages quote user
text (paths like ``runs/[a]/x``, module names, YAML, install hints like
``pip install 'gdp-graph[plot]'``), and rich would take the bracketed parts for style tags and
drop them, or fail on a stray ``[/x]``. Styling is asked for explicitly, with ``style=`` or a
:class:`rich.text.Text` (see :func:`styled`), so user text cannot turn into markup.
"""

from __future__ import annotations

import sys
from typing import Optional

from rich.console import Console
from rich.text import Text

__all__ = ["styled", "terminal_console"]

#: columns when the output is a pipe or a file (rich would assume 80 and wrap the tables)
PIPE_WIDTH = 200


def terminal_console(width: Optional[int] = None, *, stderr: bool = False) -> Console:
    """A console that does not wrap tables at 80 columns when its stream is a pipe or a file,
    and prints every string as it is (no markup, no emoji codes)."""
    stream = sys.stderr if stderr else sys.stdout
    if width is None and not stream.isatty():
        width = PIPE_WIDTH
    return Console(width=width, stderr=stderr, markup=False, emoji=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain strings and ``(text, style)`` pairs, e.g. ``styled(("group 3", "bold"), ": 64 channels")``;
    no part is read as markup."""
    return Text.assemble(*parts)
