"""Op coupling rules: one registry, one small rule per op (see :mod:`.registry`)."""

from .context import RuleContext, merge_tracks
from .registry import OpRule, describe_key, lookup, register_rule, registered_keys
from . import attention, elementwise, layers, reduce, shape  # noqa: F401  (registers the rules)

__all__ = ["OpRule", "RuleContext", "register_rule", "lookup", "describe_key", "registered_keys", "merge_tracks"]
