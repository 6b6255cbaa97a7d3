"""The policy error, in its own module so that resolution (which needs the model) can raise it
as well as loading."""

from __future__ import annotations

from gdp_graph.errors import GdpError
from gdp_graph.policy.yamlcheck import CheckError

__all__ = ["PolicyError"]


class PolicyError(CheckError, GdpError):
    """A policy failed to load or validate.

    The message holds every problem found in the source, one per line, sorted by position, each
    starting with ``file:line:col:``. The individual problems are in :attr:`diagnostics`.
    """
