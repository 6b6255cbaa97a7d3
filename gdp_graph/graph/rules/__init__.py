"""Op coupling rules: one registry, one small rule per op (see :mod:`.registry`)."""

from gdp_graph.graph.rules.context import RuleContext, merge_tracks
from gdp_graph.graph.rules.registry import (
    OpRule, copy_to_resize, describe_key, has_leaf_rule, keep_along, own_storage, lookup, register_channelwise, register_rule, registered_keys,
)
from gdp_graph.graph.rules import attention, elementwise, layers, reduce, shape  # noqa: F401  (registers the rules)
from gdp_graph.graph.rules import aten  # noqa: F401,E402  (ATen rules reuse the ones above)
from gdp_graph.graph.rules import aten_extra  # noqa: F401  (transposed convs, constant_pad_nd, index)

__all__ = ["OpRule", "copy_to_resize", "keep_along", "own_storage", "RuleContext", "register_rule", "register_channelwise", "has_leaf_rule", "lookup", "describe_key", "registered_keys", "merge_tracks"]
