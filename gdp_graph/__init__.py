"""gdp-graph: declarative, exact channel and block pruning for any PyTorch model."""

from .analysis import Analysis, AnalysisError, analyze
from .api import attach
from .finalize import finalize
from .gates import GatedModel
from .groups import Block, ChannelGroup, GateSite, Member, OpaqueLeaf
from .plan import PlanError, PruningPlan, random_plan
from .rewrite import RewriteError, rewrite
from .rules import OpRule, RuleContext, register_rule
from .trace import TraceError, trace
from .verify import VerifyResult, verify

__version__ = "0.1.0"

__all__ = [
    "Analysis", "AnalysisError", "GatedModel", "attach", "finalize", "Block", "ChannelGroup", "GateSite", "Member", "OpaqueLeaf",
    "OpRule", "PlanError", "PruningPlan", "RewriteError", "RuleContext", "TraceError",
    "VerifyResult", "analyze", "random_plan", "register_rule", "rewrite", "trace", "verify",
]
