"""Property-based fuzzing of the whole pipeline on random architectures (tests/fuzz).

The property, for every generated model: analyze -> random_plan -> rewrite -> verify either

(a) verifies: ``verify(...).ok`` for each plan, the pruned model runs on a differently sized
    batch (3) with the original's output shapes and matches the gated reference there too,
    and no parameter grows; or
(b) refuses clearly: a documented refusal (``documented_refusal``: a TraceError, AnalysisError,
    PlanError or RewriteError raised on purpose, not one that wraps an exception from a rule or
    the rewriter) whose message names a node or module, or groups frozen with a stated reason.

Anything else (ok=False, a raw exception from deep inside, a library error that only re-raises
a failure of gdp_graph's own code with the node named) is a bug. The default run is
deterministic (``derandomize``) and small; to run thousands of examples::

    GDP_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz.py -m slow -x

(``GDP_FUZZ_SEED`` picks the random stream of that run, default 0; hypothesis prints the shrunk
spec of a failure as pasteable Python.)
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, seed, settings, strategies as st
from torch import nn

import gdp_graph
from gdp_graph import AnalysisError, PlanError, RewriteError, TraceError
from gdp_graph.errors import GdpError
from gdp_graph.prune.verify import compare_outputs
from tests.fuzz.architectures import BLOCKS, Spec, build_model, example_input, infer_shapes, specs

LIBRARY_ERRORS = (TraceError, AnalysisError, PlanError, RewriteError)
DEFAULT_EXAMPLES = 300
SLOW_EXAMPLES = int(os.environ.get("GDP_FUZZ_EXAMPLES", "5000"))
SEED = int(os.environ.get("GDP_FUZZ_SEED", "0"))  #: stream of the slow run

#: (ratio, seed, block_ratio) of 1-2 random plans; block_ratio 1.0 as well as 0.5 because
#: round(0.5 * 1) == 0 would never remove a model's only removable block
plans = st.lists(st.tuples(st.sampled_from([0.5, 0.2]), st.integers(0, 2 ** 16), st.sampled_from([0.5, 1.0])),
                 min_size=1, max_size=2)


def _run(model: nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(x)


def _shapes(value: Any) -> list[tuple[int, ...]]:
    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    return [s for v in value for s in _shapes(v)]


def _names_a_place(message: str, model: nn.Module, analysis=None) -> bool:
    """True when an error message names a node, a module, a group or a block."""
    places = {name for name, _ in model.named_modules() if name} | {type(model).__name__}
    if analysis is not None:
        places |= {n.name for n in analysis.traced.gm.graph.nodes}
    return (any(re.search(rf"\b{re.escape(p)}\b", message) for p in places)
            or re.search(r"\b(node|group|block) '?\w+", message) is not None)


def documented_refusal(exc: BaseException) -> bool:
    """True for a refusal the library documents: one of ``LIBRARY_ERRORS`` raised on purpose.
    Such an error that wraps another exception is a failure inside gdp_graph re-raised with the
    node named (a rule's ``propagate``, the rewriter, a removed block's constant), i.e. a bug;
    the exception is a TraceError that says torch.fx / torch.export cannot trace the model,
    which wraps the tracer's own error by design."""
    if not isinstance(exc, LIBRARY_ERRORS):
        return False
    if isinstance(exc, TraceError) and str(exc).startswith("cannot trace"):
        return True
    cause = exc.__cause__
    while isinstance(cause, GdpError):  # a library error re-raised as another is judged by its origin
        if cause.__cause__ is None:
            return True
        cause = cause.__cause__
    return cause is None


def _refused(exc: Exception, model: nn.Module, analysis=None) -> str:
    assert documented_refusal(exc), f"a failure inside gdp_graph, not a refusal: {type(exc).__name__}: {exc}"
    assert _names_a_place(str(exc), model, analysis), f"refusal names no node or module: {exc}"
    return f"refused: {type(exc).__name__}"


def _param_sizes(model: nn.Module) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters()}


def check_pipeline(spec: Spec, plan_draws: list[tuple[float, int, float]]) -> list[str]:
    """Assert the property for one spec; return what happened (for hypothesis statistics)."""
    model = build_model(spec)
    x2, x3 = example_input(spec, 2), example_input(spec, 3, seed=1)
    try:
        analysis = gdp_graph.analyze(model, (x2,))
    except LIBRARY_ERRORS as exc:
        return [_refused(exc, model)]
    for g in analysis.groups:
        assert not bool(g.frozen_units.any()) or g.frozen_reasons, f"group {g.id} frozen without a reason"
        assert g.exact or g.inexact_reasons
    if not analysis.prunable_groups() and not any(b.prunable for b in analysis.blocks):
        return ["all frozen"]
    try:
        out3 = _run(model, x3)
    except Exception:  # noqa: BLE001 - a model that only runs at batch 2 is fine
        out3 = None
    # check=False: the fuzzer verifies itself, so a wrong model shows up as one, not as a
    # RewriteError from rewrite's own self-check
    unchanged = gdp_graph.rewrite(analysis, gdp_graph.PruningPlan(), check=False)
    same = compare_outputs(_run(model, x2), _run(unchanged, x2), tolerance=1e-5)
    assert same.ok, f"rewriting with an empty plan changed the model: {same}"
    before = _param_sizes(analysis.traced.gm)
    outcomes = []
    for ratio, plan_seed, block_ratio in plan_draws:
        plan = gdp_graph.random_plan(analysis, ratio, seed=plan_seed, block_ratio=block_ratio)
        where = f"plan (ratio {ratio}, seed {plan_seed}, block_ratio {block_ratio}):\n{plan.summary(analysis)}"
        try:
            pruned = gdp_graph.rewrite(analysis, plan, check=False)
        except LIBRARY_ERRORS as exc:
            outcomes.append(_refused(exc, model, analysis))
            continue
        result = gdp_graph.verify(analysis, plan, pruned)
        assert result.ok, f"pruned model differs from the gated reference: {result}\n{where}"
        after = _param_sizes(pruned)
        grown = {k: (before.get(k), v) for k, v in after.items() if v > before.get(k, 0)}
        assert not grown, f"parameters grew: {grown}\n{where}"
        assert sum(after.values()) <= sum(before.values())
        if out3 is not None:
            pruned3 = _run(pruned, x3)
            assert _shapes(pruned3) == _shapes(out3), f"pruned output shapes differ on batch 3\n{where}"
            again = gdp_graph.verify(analysis, plan, pruned, inputs=(x3,))
            assert again.ok, f"on batch 3 the pruned model differs from the gated reference: {again}\n{where}"
        if not plan.keep and not plan.removed_blocks:
            outcomes.append("verified: nothing removed")
            continue
        groups = f"{len(plan.keep)}" if len(plan.keep) < 3 else "3+"
        outcomes.append(f"verified: {groups} groups and {len(plan.removed_blocks)} blocks pruned")
    return outcomes


def _fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink], print_blob=True)


#: the share of generated models that must verify with something removed: a regression that
#: freezes or refuses everything keeps the property above but fails this floor (measured
#: share on the default run when the floor was set: see the test's docstring)
PRUNED_FLOOR = 0.75


def _pruned(outcomes: list[str]) -> bool:
    return any(o.startswith("verified:") and o != "verified: nothing removed" for o in outcomes)


def test_pipeline_exact_or_refused():
    """Random architectures: verified, or refused with a reason (statistics of what happened:
    ``--hypothesis-show-statistics``); and most of them (``PRUNED_FLOOR``; 0.85 of the 300
    default examples when the floor was set) verify with units or blocks actually removed."""
    per_example: list[list[str]] = []

    @_fuzz_settings(DEFAULT_EXAMPLES)
    @given(spec=specs(max_blocks=8), plan_draws=plans)
    def run(spec, plan_draws):
        outcomes = check_pipeline(spec, plan_draws)
        for outcome in outcomes:
            event(outcome)
        per_example.append(outcomes)

    run()
    share = sum(_pruned(o) for o in per_example) / max(len(per_example), 1)
    assert share >= PRUNED_FLOOR, (f"only {share:.2f} of {len(per_example)} generated models verified with "
                                   f"something removed (floor {PRUNED_FLOOR})")


@pytest.mark.slow
@seed(SEED)
@settings(_fuzz_settings(SLOW_EXAMPLES), derandomize=False)
@given(spec=specs(max_blocks=12), plan_draws=plans)
def test_pipeline_exact_or_refused_many(spec, plan_draws):
    """Thousands of examples of larger models, a fresh stream per ``GDP_FUZZ_SEED``."""
    for outcome in check_pipeline(spec, plan_draws):
        event(outcome)


# -- the strategy itself -----------------------------------------------------------------------
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(specs(max_blocks=8))
def test_generated_models_run_and_trace(spec):
    """Every spec is consistent, its model runs at batch 2 with the shapes the spec claims,
    and torch.fx can trace it."""
    shapes = spec.shapes()
    assert len(shapes) == 1 + sum(len(p) for p in infer_shapes(spec.channels, spec.size, spec.ops))
    model = build_model(spec)
    assert not model.training
    out = _run(model, example_input(spec, 2))
    last = shapes[-1]
    if spec.head == "none":
        assert tuple(out.shape) == (2, *last)
    elif spec.head == "two_outputs":
        assert tuple(out[0].shape) == (2, *last)
    else:
        assert tuple(out.shape) == (2, spec.classes)
    assert all(torch.isfinite(t).all() for t in (out if isinstance(out, tuple) else (out,)))
    torch.fx.symbolic_trace(model)
    assert eval(repr(spec), {"Spec": Spec}) == spec  # the printed spec is pasteable


def test_strategy_reaches_every_block():
    """Each block kind can be generated on its own and yields a runnable model."""
    for name in BLOCKS:
        @settings(max_examples=5, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(specs(min_blocks=2, max_blocks=2, blocks=[name]))
        def run_one(spec):
            _run(build_model(spec), example_input(spec, 2))

        run_one()


def test_spec_repr_is_readable():
    spec = Spec(channels=4, size=6, head="gap_linear", ops=[
        {"op": "conv", "src": 0, "out": 8, "k": 3},
        {"op": "chunk", "src": 1, "n": 2},
        {"op": "add", "srcs": [2, 3]},
    ])
    text = repr(spec)
    assert "# t2, t3: (4, 6, 6), (4, 6, 6)" in text
    assert "# t4: (4, 6, 6)" in text
    assert eval(text, {"Spec": Spec}) == spec


def test_known_good_spec_verifies():
    """A hand-written residual + attention + shuffle model goes through the whole property."""
    spec = Spec(channels=4, size=6, head="gap_linear", ops=[
        {"op": "conv", "src": 0, "out": 8, "k": 3},
        {"op": "norm", "src": 1, "kind": "bn"},
        {"op": "act", "src": 2, "kind": "relu"},
        {"op": "conv", "src": 3, "out": 8, "k": 3},
        {"op": "add", "srcs": [3, 4]},
        {"op": "attn", "src": 5, "heads": 2, "head_dim": 4, "style": "literal", "fused": True,
         "sdpa": True, "prenorm": False},
        {"op": "shuffle", "src": 6, "groups": 2},
    ])
    outcomes = check_pipeline(spec, [(0.5, 0, 0.5), (0.2, 1, 1.0)])
    assert outcomes[0].startswith("verified") and "0 groups" not in outcomes[0], outcomes


# -- minimal failing specs found by the fuzzer -------------------------------------------------
# Each is the shrunk example hypothesis reported. Cases marked xfail are open bugs in gdp_graph
# (strict: they start to fail as soon as the bug is fixed; then drop the mark).
def _open_bug(reason: str):
    return pytest.mark.xfail(strict=True, raises=(RuntimeError, AssertionError, IndexError, ZeroDivisionError),
                             reason=reason)


FOUND = [
    pytest.param(Spec(channels=4, size=4, head="gap_linear", ops=[
        {"op": "conv", "src": 0, "out": 8, "k": 3},
        {"op": "chunk", "src": 1, "n": 2},
        {"op": "conv", "src": 2, "out": 4, "k": 1},
        {"op": "cat", "srcs": [3, 4]},
        {"op": "shuffle", "src": 5, "groups": 2},
    ]), [(0.5, 0, 0.5), (0.5, 1, 0.5)], id="method-chunk-rewritten-as-split"),
    pytest.param(Spec(channels=4, size=4, head="gap_linear", ops=[
        {"op": "chunk", "src": 0, "n": 2},
        {"op": "conv", "src": 1, "out": 2, "k": 3},
        {"op": "cat", "srcs": [2, 3]},
        {"op": "shuffle", "src": 4, "groups": 2},
    ]), [(0.5, 0, 0.5)], id="shuffle-of-partly-untracked-channels"),
    pytest.param(Spec(channels=4, size=4, head="gap_linear", ops=[
        {"op": "chunk", "src": 0, "n": 2},
        {"op": "conv", "src": 1, "out": 2, "k": 3},
        {"op": "cat", "srcs": [2, 3]},
        {"op": "conv", "src": 4, "out": 4, "k": 1},
        {"op": "add", "srcs": [4, 5]},
    ]), [(0.5, 0, 0.5)], id="add-with-partly-untracked-operand"),
    pytest.param(Spec(channels=4, size=4, head="gap_linear", ops=[
        {"op": "conv", "src": 0, "out": 4, "k": 3},
        {"op": "chunk", "src": 1, "n": 2},
        {"op": "conv", "src": 3, "out": 4, "k": 3},
    ]), [(0.5, 5, 0.5)], id="plan-empties-a-chunk-piece"),  # plans now keep one input per layer
    pytest.param(Spec(channels=4, size=4, head="gap_linear", ops=[
        {"op": "conv", "src": 0, "out": 24, "k": 3},
        {"op": "conv", "src": 1, "out": 24, "k": 1, "groups": 2},
        {"op": "shuffle", "src": 2, "groups": 4, "style": "reshape"},
    ]), [(0.5, 3480, 0.5)], id="size-read-through-a-slice-of-shape"),
    pytest.param(Spec(channels=3, size=4, head="gap_linear", ops=[
        {"op": "conv", "src": 0, "out": 4, "k": 1},
        {"op": "slice", "src": 1, "start": 0, "stop": 1},
        {"op": "cat", "srcs": [2, 1, 2]},
        {"op": "conv", "src": 3, "out": 6, "k": 1},
        {"op": "add", "srcs": [3, 4]},
    ]), [(0.5, 0, 0.5)], id="one-channel-piece-twice-in-cat"),  # fixed: cat inputs tracked on the
    # joined dim run together; the same spec through the per-input path is still an open bug:
    # test_one_channel_piece_twice_through_the_per_input_path
    pytest.param(Spec(channels=4, size=4, head="gap_linear", ops=[
        {"op": "conv", "src": 0, "out": 4, "k": 3},
        {"op": "chunk", "src": 1, "n": 2},
        {"op": "norm", "src": 3, "kind": "bn"},
        {"op": "cat", "srcs": [2, 4]},
    ]), [(0.5, 5, 0.5)], id="plan-empties-a-piece-before-batchnorm",
        marks=_open_bug("every channel of one chunk piece is removed; no layer starves (the cat "
                        "still feeds the head) but BatchNorm2d(0) on the empty piece raises "
                        "(GroupNorm and max_pool2d too)")),
    pytest.param(Spec(channels=4, size=4, head="gap_linear", ops=[
        {"op": "fc_reshape", "src": 0, "out": 6},
        {"op": "cat", "srcs": [1, 0]},
        {"op": "fc_reshape", "src": 2, "out": 6},
    ]), [(0.5, 0, 0.5)], id="cat-of-a-tracked-spatial-dim-with-an-untracked-one",
        marks=_open_bug("Linear -> view(-1, 6, h, w) makes W a tracked dim (units are columns); "
                        "cat along channels with the input, whose W is untracked, lets the plan "
                        "shrink W on one side only")),
]


@pytest.mark.parametrize(("spec", "plan_draws"), FOUND)
def test_found_by_fuzzing(spec, plan_draws):
    check_pipeline(spec, plan_draws)


@_open_bug("run alone, a 1-channel tensor appearing twice in a cat has one element at two positions "
           "and nulls between: infer_tracks, which ignores nulls (zero padding), sees no varying dim and "
           "drops it as a constant; the add then leaves the conv channels added there prunable")
def test_one_channel_piece_twice_through_the_per_input_path(monkeypatch):
    from gdp_graph.graph.rules import context
    apart = context.RuleContext.movement
    monkeypatch.setattr(context.RuleContext, "movement", lambda self, *a, side_by_side=None, **k: apart(self, *a, **k))
    spec, plan_draws = next((p.values for p in FOUND if p.id == "one-channel-piece-twice-in-cat"))
    check_pipeline(spec, plan_draws)


def test_plan_that_starves_a_layer_is_refused():
    spec = Spec(channels=4, size=4, head="gap_linear", ops=[
        {"op": "conv", "src": 0, "out": 4, "k": 3},
        {"op": "chunk", "src": 1, "n": 2},
        {"op": "conv", "src": 3, "out": 4, "k": 3},
    ])
    model = build_model(spec)
    analysis = gdp_graph.analyze(model, (example_input(spec, 2),))
    conv = next(g for g in analysis.groups if g.prunable and g.size == 4)
    starved = None
    for site in conv.gate_sites:
        units = sorted(set(site.unit_index[site.unit_index >= 0].tolist()))
        if 0 < len(units) < conv.size:
            starved = tuple(u for u in range(conv.size) if u not in units)
    assert starved is not None
    with pytest.raises(gdp_graph.PlanError, match="would receive no input channels"):
        gdp_graph.PruningPlan(keep={conv.id: starved}).validate(analysis)
