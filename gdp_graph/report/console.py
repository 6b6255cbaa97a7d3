"""The rich console every report prints to."""

from __future__ import annotations

import sys
from typing import Optional

from rich.console import Console

__all__ = ["terminal_console"]

#: columns when the output is a pipe or a file (rich would assume 80 and wrap the tables)
PIPE_WIDTH = 200


def terminal_console(width: Optional[int] = None, *, stderr: bool = False) -> Console:
    """A console that does not wrap tables at 80 columns when its stream is a pipe or a file."""
    stream = sys.stderr if stderr else sys.stdout
    if width is None and not stream.isatty():
        width = PIPE_WIDTH
    return Console(width=width, stderr=stderr)
