"""What a policy ties together across items: the *uniform sets* of channel groups that keep one
unit count (``uniform: true``) and the *inner groups* of blocks at ``block_level: inner``.

Both are computed once by :func:`gdp_graph.policy.resolve` and kept on the
:class:`~gdp_graph.policy.Resolution`; :mod:`gdp_graph.gates.selection` applies them when it
turns gates or scores into a plan.

Uniform sets
------------
A gated group whose effective ``uniform`` is true belongs to the set of the rule that set it
(``defaults`` when no rule did) and of its unit kind, so heads and channels matched by one rule
form two sets. Every member of a set must have the same size -- a set mixing sizes is a
:class:`~gdp_graph.policy.PolicyError` located at that rule: one common count cannot fit groups
of different sizes, and such a set almost always means a selector that catches more than meant
(a ``module`` glob also matches the residual stream that runs through the module).

Inner blocks
------------
A group lies *inside* a block when every one of its member nodes is a node of the branch; it
then vanishes with the block. A block at level ``inner`` has no gate of its own: it goes when
all its inner groups lose every unit. That is only reachable when the block has inner groups
and every one of them is gated with no frozen unit; otherwise the block is never removed and
:func:`inner_block_problem` says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from gdp_graph.policy.errors import PolicyError
from gdp_graph.policy.model import Policy
from gdp_graph.policy.yamlcheck import Diagnostic, Location

if TYPE_CHECKING:  # pragma: no cover
    from gdp_graph.graph.groups import Block, ChannelGroup

__all__ = ["inner_block_problem", "inner_groups", "uniform_sets"]


def inner_groups(groups: Sequence["ChannelGroup"], block: "Block") -> tuple[int, ...]:
    """Ids of the groups whose every member node lies in ``block``'s branch (groups without
    members lie nowhere)."""
    nodes = set(block.nodes)
    out = []
    for g in groups:
        members = {m.node for m in getattr(g, "members", ())}
        if members and members <= nodes:
            out.append(g.id)
    return tuple(out)


def inner_block_problem(inner: Sequence[int], groups: Mapping[int, "ChannelGroup"],
                        group_reasons: Mapping[int, str]) -> Optional[str]:
    """Why a block at level ``inner`` can never be removed, or None when it can (see the
    module docstring). ``group_reasons``: why each ungated group has no gates."""
    if not inner:
        return "no channel group lies entirely inside the branch (use level: block)"
    for gid in inner:
        if gid in group_reasons:
            return f"its inner group {gid} has no gates ({group_reasons[gid]})"
        frozen = getattr(groups[gid], "frozen_units", None)
        if frozen is not None and bool(frozen.any()):
            return (f"its inner group {gid} has {int(frozen.sum())} frozen unit(s) "
                    f"({groups[gid].describe_frozen()})")
    return None


def uniform_sets(policy: Policy, gated: Sequence["ChannelGroup"], uniform: Mapping[int, bool],
                 sources: Mapping[int, Optional[int]]) -> tuple[tuple[int, ...], ...]:
    """The uniform sets among the ``gated`` groups, each a sorted tuple of group ids, sets of
    one group left out (nothing to tie). ``uniform``: each group's effective value;
    ``sources``: the index of the rule that set it (None: ``defaults``).

    Raises:
        PolicyError: a set mixes group sizes (one line per such set, at the rule).
    """
    sets: dict[tuple[int, str], list["ChannelGroup"]] = {}
    for g in gated:
        if uniform.get(g.id):
            source = sources.get(g.id)
            sets.setdefault((-1 if source is None else source, g.unit), []).append(g)
    problems = []
    for (source, unit), members in sets.items():
        sizes: dict[int, list[int]] = {}
        for g in members:
            sizes.setdefault(g.size, []).append(g.id)
        if len(sizes) > 1:
            problems.append(_mixed_sizes(policy, None if source < 0 else source, unit, sizes))
    if problems:
        raise PolicyError(problems)
    return tuple(sorted(tuple(sorted(g.id for g in members))
                        for members in sets.values() if len(members) > 1))


def _mixed_sizes(policy: Policy, source: Optional[int], unit: str,
                 sizes: Mapping[int, list[int]]) -> Diagnostic:
    if source is None:
        where = policy.locations.get("defaults.uniform", Location(policy.source))
        label = "defaults.uniform"
    else:
        rule = policy.rules[source]
        where, label = rule.location, rule.label
    found = "; ".join(f"size {size}: group{'s' if len(ids) > 1 else ''} "
                      f"{', '.join(map(str, ids[:6]))}{', ...' if len(ids) > 6 else ''}"
                      for size, ids in sorted(sizes.items()))
    return Diagnostic(where, f"{label}: uniform: true ties gated {unit} groups of different "
                             f"sizes ({found}); one kept count needs one size: narrow the "
                             "selector, or set uniform: false for the others in a later rule "
                             "(e.g. match: {coupling: residual})")
