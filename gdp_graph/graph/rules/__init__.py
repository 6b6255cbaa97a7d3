"""Op coupling rules: one registry, one small rule per op (see :mod:`.registry`)."""

from gdp_graph.graph.rules.context import RuleContext, merge_tracks
from gdp_graph.graph.rules.registry import (
    OpRule, Resize, copy_to_resize, describe_key, has_leaf_rule, kept_slices, lookup, register_channelwise,
    register_rule, register_sizes, registered_keys, sizes_of,
)
from gdp_graph.graph.rules import attention, elementwise, layers, reduce, shape  # noqa: F401  (registers the rules)
from gdp_graph.graph.rules import aten  # noqa: F401,E402  (ATen rules reuse the ones above)
from gdp_graph.graph.rules import aten_extra  # noqa: F401  (transposed convs, constant_pad_nd, index)
from gdp_graph.graph.rules import einsum  # noqa: F401  (torch.einsum and aten.einsum)

__all__ = ["OpRule", "Resize", "copy_to_resize", "kept_slices", "RuleContext", "register_rule", "register_channelwise",
           "register_sizes", "sizes_of", "has_leaf_rule", "lookup", "describe_key", "registered_keys", "merge_tracks"]
