"""The fuzzer's idea of a refusal (tests/test_fuzz.py ``documented_refusal``): a library error
raised on purpose counts, one that only re-raises a failure inside gdp_graph with the node named
is a bug the property must report."""

from __future__ import annotations

import pytest
from torch import nn

from gdp_graph import PlanError, RewriteError, TraceError
from tests.fuzz.architectures import Spec
from tests.test_fuzz import check_pipeline, documented_refusal

KNOWN_GOOD = Spec(channels=4, size=6, head="gap_linear", ops=[
    {"op": "conv", "src": 0, "out": 8, "k": 3}, {"op": "norm", "src": 1, "kind": "bn"},
    {"op": "conv", "src": 2, "out": 8, "k": 1}])


@pytest.mark.parametrize("stage", ["propagate", "resize"])
def test_a_bug_inside_a_rule_fails_the_property_instead_of_counting_as_a_refusal(stage, monkeypatch):
    """A rule that raises (here IndexError, as a slicing bug would) reaches the user as an
    AnalysisError / RewriteError naming the node; the fuzzer must call that a bug."""
    from gdp_graph.graph.rules.registry import lookup
    rule = lookup(nn.BatchNorm2d(2))
    original, calls = getattr(rule, stage), []

    def broken(*args, **kwargs):
        calls.append(1)
        if stage == "resize" and len(calls) == 1:  # the empty plan's rewrite (a bug there fails anyway)
            return original(*args, **kwargs)
        raise IndexError("index 5 is out of bounds for dimension 0 with size 4")

    monkeypatch.setattr(rule, stage, broken)
    with pytest.raises(AssertionError, match="a failure inside gdp_graph, not a refusal: (Analysis|Rewrite)Error"):
        check_pipeline(KNOWN_GOOD, [(0.5, 0, 0.5)])


def test_documented_refusals_still_count():
    """A deliberate refusal (no wrapped failure) and an untraceable model are refusals."""
    assert documented_refusal(PlanError("node 'conv' would receive no input channels"))
    try:
        try:
            raise PlanError("group 3 is empty")
        except PlanError as inner:
            raise RewriteError("cannot rewrite node 'conv'") from inner
    except RewriteError as outer:
        assert documented_refusal(outer)
    assert documented_refusal(TraceError("cannot trace Net.forward: data-dependent control flow"))
    assert not documented_refusal(ValueError("x"))
