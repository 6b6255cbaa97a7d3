"""Training-framework callbacks (optional extras): PyTorch Lightning (``gdp-graph[lightning]``)
and the Hugging Face ``Trainer`` (``gdp-graph[hf]``). Both drive the same :class:`GateDriver`:
the penalty's gradient, the gates' own optimizer, the schedule step, finalize at the end."""

from gdp_graph.integrations.driver import GateDriver

__all__ = ["GateDriver"]
