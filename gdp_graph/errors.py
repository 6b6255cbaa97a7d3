"""The one base class of every error gdp-graph raises on bad input or an impossible request.

Catch :class:`GdpError` to handle them all (the command line does: one line, exit 2). Each
stage's error also keeps the builtin it always was (``ValueError`` for bad arguments,
``RuntimeError`` for a model that cannot be handled), so existing ``except`` clauses still work.
"""

from __future__ import annotations

__all__ = ["GdpError"]


class GdpError(Exception):
    """Base class of gdp-graph's errors: the message names the file, line, module or op at fault."""
