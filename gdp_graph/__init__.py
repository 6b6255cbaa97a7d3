"""gdp-graph: declarative, exact channel and block pruning for any PyTorch model.

The stages, one package each, data flowing one way:

``graph``   trace the model (torch.fx), propagate channel labels through the op-rule registry,
            form coupled channel groups and removable blocks, price them (cost model)
``prune``   an immutable pruning plan, the rewriter that applies it, verification, export
``policy``  YAML pruning policies: validation, and resolution against an analysis
``gates``   GDP gates from a policy, the regularizers and budget controller, finalize
``importance`` one-shot unit and block importance (magnitude, activation, Taylor, depth) and a
            plan to a budget from it
``report``  terminal tables and latency measurement
``recipes`` complete training pipelines (CIFAR-10)
``cli``     the ``gdp-graph`` command
"""

from gdp_graph.errors import GdpError
from gdp_graph.graph.analysis import Analysis, AnalysisError, analyze
from gdp_graph.graph.groups import Block, ChannelGroup, GateSite, Member, OpaqueLeaf
from gdp_graph.graph.rules import OpRule, RuleContext, register_channelwise, register_rule
from gdp_graph.graph.trace import TraceError, trace
from gdp_graph.prune.plan import PlanError, PruningPlan, random_plan
from gdp_graph.prune.rewrite import RewriteError, Rewritten, apply_plan, rewrite
from gdp_graph.prune.slices import SliceMap, slice_map
from gdp_graph.prune.verify import VerifyResult, verify
from gdp_graph.policy import Policy, PolicyError, load_policy
from gdp_graph.gates.model import GatedModel, GateError
from gdp_graph.gates.finalize import FinalizeError, finalize
from gdp_graph.gates.attach import attach
import gdp_graph.importance  # noqa: E402,F401  registers the data-free regularizer.init scorers for attach()

__version__ = "0.1.0"

__all__ = [
    "Analysis", "AnalysisError", "Block", "ChannelGroup", "FinalizeError", "GateError", "GateSite",
    "GatedModel", "GdpError", "Member", "OpRule", "OpaqueLeaf", "PlanError", "Policy", "PolicyError",
    "PruningPlan", "RewriteError", "Rewritten", "RuleContext", "SliceMap", "TraceError", "VerifyResult", "analyze",
    "apply_plan", "attach",
    "finalize", "load_policy", "random_plan", "register_channelwise", "register_rule", "rewrite", "slice_map", "trace",
    "verify",
]
