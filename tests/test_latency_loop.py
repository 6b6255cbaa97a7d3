"""Closing the loop on a latency target (gdp_graph.latency.loop): the plan is built, measured
and the aim corrected. Every measurement here is deterministic (a fake device whose latency the
table gets wrong, or a clock that counts parameters), so the tests check the mechanics (the
correction converges, every round is recorded, the closest plan is kept), never a timing."""

from __future__ import annotations

import pytest
import torch

import gdp_graph as G
from gdp_graph.graph.cost import CostModel
from gdp_graph.importance import score_units
from gdp_graph.latency import LatencySettings, attach_latency, build_table, load_or_build
from gdp_graph.importance import one_shot_to_latency
from gdp_graph.latency.loop import LoopRound, Measured, close_loop, latency_measure, next_aim
from gdp_graph.policy import policy_from_dict, resolve
from gdp_graph.prune.plan import PruningPlan
from tests.test_latency import FakeTimer, _measured
from tests.zoo import ZOO


def _device(slope: float, offset: float):
    """A planner whose plans are predicted at their aim (to 0.005) and a device that measures
    ``slope * predicted + offset`` of them: the table is wrong, deterministically."""
    def plan_at(aim: float):
        predicted = round(aim / 0.005) * 0.005
        return PruningPlan(keep={0: tuple(range(int(predicted * 1000)))}), predicted

    def measure(plan: PruningPlan):
        p = len(plan.keep[0]) / 1000
        m = slope * p + offset
        return torch.nn.Identity(), Measured(m, m - 0.01, m + 0.01, 5)
    return plan_at, measure


def _round(aim: float, predicted: float, measured: float) -> LoopRound:
    return LoopRound(aim, predicted, Measured(measured, measured, measured))


def test_next_aim_ratio_then_secant():
    assert next_aim(0.5, [_round(0.5, 0.5, 0.6)]) == pytest.approx(0.5 * 0.5 / 0.6)
    # two rounds: the secant through (0.5, 0.6) and (0.4, 0.48) solved for 0.5
    assert next_aim(0.5, [_round(0.5, 0.5, 0.6), _round(0.42, 0.4, 0.48)]) == pytest.approx(0.4 + 0.02 / 1.2)
    # an implausible slope (noise: measured rose while predicted fell) falls back to the ratio
    assert next_aim(0.5, [_round(0.5, 0.5, 0.55), _round(0.45, 0.45, 0.56)]) == pytest.approx(0.45 * 0.5 / 0.56)
    assert next_aim(0.5, [_round(0.5, 0.02, 4.0)]) == 0.01  # kept inside the range of fractions


@pytest.mark.parametrize("slope,offset", [(1.0, 0.06), (1.0, -0.05), (1.3, -0.1), (0.8, 0.15)])
def test_close_loop_converges_on_a_biased_device(slope, offset):
    plan_at, measure = _device(slope, offset)
    for target in (0.7, 0.5):
        result = close_loop(target, plan_at, measure, corrections=2, tolerance=0.02)
        assert abs(result.measured - target) <= 0.02
        assert 1 <= len(result.rounds) <= 3
        assert result.rounds[0].aim == target  # the first plan is the table's own
        d = result.to_dict()
        assert [r["measured"] for r in d["rounds"]] == [round(r.measured.ratio, 4) for r in result.rounds]
        assert d["measured"] == round(result.measured, 4) and d["chosen"] == result.chosen


def test_close_loop_rounds_and_choice():
    plan_at, measure = _device(1.0, 0.06)
    none = close_loop(0.5, plan_at, measure, corrections=0)
    assert len(none.rounds) == 1 and none.measured == pytest.approx(0.56) and none.predicted == 0.5
    seen = []
    exact = close_loop(0.5, *_device(1.0, 0.0), corrections=3, on_round=seen.append)
    assert len(exact.rounds) == 1 and seen == list(exact.rounds)  # within tolerance at once: no correction
    # a device that never gets closer: every correction is spent and the closest round is kept
    far = close_loop(0.5, plan_at, lambda p: (torch.nn.Identity(), Measured(0.9 - len(p.keep[0]) / 1e4, 0, 1)),
                     corrections=2, tolerance=0.0)
    assert len(far.rounds) == 3
    assert far.chosen == min(range(3), key=lambda i: abs(far.rounds[i].measured.ratio - 0.5))
    with pytest.raises(ValueError):
        close_loop(0.5, plan_at, measure, corrections=-1)


def test_close_loop_stops_when_the_plan_repeats():
    calls = []

    def measure(plan):
        calls.append(plan)
        return torch.nn.Identity(), Measured(0.6, 0.6, 0.6)
    result = close_loop(0.5, lambda aim: (PruningPlan(keep={}), 0.5), measure, corrections=3)
    assert len(calls) == 1 and len(result.rounds) == 1


class _SlowerTimer(FakeTimer):
    """The device as it really is: every node pays twice the overhead the table was built with,
    so small widths are slower than the table says."""

    def model(self, module, inputs) -> float:
        nodes = len([n for n in module.graph.nodes if n.op.startswith("call")])
        return super().model(module, inputs) + 2e-6 * nodes


def test_one_shot_to_latency_corrects_the_table_on_a_real_model():
    model, inputs = ZOO["mobilenetv2"]()
    analysis = G.analyze(model, inputs)
    cost = CostModel(analysis)
    attach_latency(cost, build_table(analysis, LatencySettings(points=4), cost_model=cost, timer=FakeTimer()))
    policy = policy_from_dict({"version": 1, "target": {"metric": "latency", "fraction": 0.6, "tolerance": 0.01},
                               "latency": {"corrections": 3}})
    resolution = resolve(policy, analysis.groups, analysis.blocks)
    timer = _SlowerTimer()
    x = analysis.traced.example_inputs
    whole = timer.model(G.rewrite(analysis, PruningPlan(keep={}), check=False, keep_class=False), x)

    def measure(plan):
        pruned = G.rewrite(analysis, plan, check=False, keep_class=False)
        r = timer.model(pruned, x) / whole
        return pruned, Measured(r, r, r, 1)
    result = one_shot_to_latency(analysis, score_units(analysis, "magnitude"), resolution, cost, model,
                                 measure=measure)
    first = result.rounds[0]
    assert abs(first.predicted - 0.6) < 0.03 and first.measured.ratio - first.predicted > 0.01  # the table is off
    assert len(result.rounds) >= 2 and abs(result.measured - 0.6) < abs(first.measured.ratio - 0.6)
    assert _measured(analysis, result.plan) > 0  # the chosen plan rewrites


def test_latency_measure_times_the_plan_against_the_original():
    """With a clock that advances by each forward's parameter count, the measured ratio is the
    parameter ratio, exactly: the plan's model was built and timed beside the original."""
    model, inputs = ZOO["mobilenetv2"]()
    analysis = G.analyze(model, inputs)
    ticks = [0.0]

    def count(module, args, out):
        ticks[0] += sum(p.numel() for p in module.parameters())

    def build(plan):
        pruned = G.rewrite(analysis, plan)
        pruned.register_forward_hook(count)
        return pruned
    model.register_forward_hook(count)
    plan = G.random_plan(analysis, 0.4, seed=0)
    measure = latency_measure(model, build, analysis.traced.example_inputs, LatencySettings(), rounds=3, repeat=1,
                              clock=lambda: ticks[0])
    pruned, m = measure(plan)
    ratio = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())
    assert m.ratio == pytest.approx(ratio) and m.rounds == 3 and m.q1 == pytest.approx(ratio)


def _gated_to_latency(tmp_path, corrections: int):
    """mobilenetv2 gated to 0.8 of the latency on the fake table (cached; its gated groups can go
    down to about 0.67), the cut after 4 steps."""
    model, inputs = ZOO["mobilenetv2"]()
    policy = {"version": 1, "target": {"metric": "latency", "fraction": 0.8, "tolerance": 0.01},
              "latency": {"cache": str(tmp_path), "points": 2, "corrections": corrections},
              "regularizer": {"fix_at": 0.5}}
    load_or_build(G.analyze(model, inputs), policy_from_dict(policy).latency, timer=FakeTimer(), show_progress=False)
    return G.attach(model, policy, example_inputs=inputs, total_steps=8), inputs


def test_gdp_cut_to_a_latency_target_is_corrected_by_what_is_measured(tmp_path):
    """A device 1.1x slower than the table (deterministic, from the cost model's own
    prediction): the cut's first plan is the table's, measured above the target, and the loop
    cuts deeper until the measurement lands; the gates are cut to the plan it chose, and the
    report keeps every round."""
    from gdp_graph.gates.selection import plan_fraction
    gated, _ = _gated_to_latency(tmp_path, corrections=3)

    def measure(plan):
        m = 1.1 * plan_fraction(gated.cost_model, plan, "latency")
        return torch.nn.Identity(), Measured(m, m, m, 1)
    gated.cut_measure = measure
    report = gated.fix_gates()
    loop = report["latency_loop"]
    first = loop["rounds"][0]
    assert first["aim"] == 0.8 and first["measured"] > 0.8 + 0.05  # the table's own cut, too slow here
    assert 2 <= len(loop["rounds"]) <= 4 and abs(loop["measured"] - 0.8) <= 0.02
    assert report["fraction"] == pytest.approx(loop["predicted"], abs=0.005)  # the gates cut to the chosen plan
    assert bool(gated.fixed) and report["fraction"] < first["predicted"] - 0.03  # deeper than the table's cut


def test_gdp_cut_without_a_measure_or_corrections_is_the_tables(tmp_path):
    for corrections, measure in ((3, None), (0, lambda plan: pytest.fail("measured with corrections 0"))):
        gated, _ = _gated_to_latency(tmp_path / str(corrections), corrections)
        gated.cut_measure = measure
        report = gated.fix_gates()
        assert "latency_loop" not in report and report["fraction"] == pytest.approx(0.8, abs=0.03)


def test_the_prune_driver_measures_the_cut_of_a_latency_target(tmp_path, monkeypatch):
    """``prune`` to a latency target sets the cut's measure (the policy's default corrections)
    and returns what the cut did in the gates' report; the measure here is a fake (parameters
    kept), so nothing is timed."""
    import importlib.util
    from pathlib import Path

    from gdp_graph import latency
    from gdp_graph.policy import Policy
    from gdp_graph.recipes.driver import Schedule, run_prune
    spec = importlib.util.spec_from_file_location("own_model", Path(__file__).parents[1] / "examples" / "own_model.py")
    own = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(own)
    torch.manual_seed(0)
    model, example = own.model()
    task = own.task()
    data = Policy.default().to_dict()
    data["target"] = {"metric": "latency", "fraction": 0.6, "tolerance": 0.02}
    data["latency"] = {"cache": str(tmp_path), "points": 2}
    policy = policy_from_dict(data)
    load_or_build(G.analyze(model, (example,)), policy.latency, timer=FakeTimer(), show_progress=False)
    asked = []

    def fake_cut_measure(analysis, settings):
        asked.append(settings.corrections)
        whole = sum(p.numel() for p in G.rewrite(analysis, PruningPlan(keep={}), check=False).parameters())

        def measure(plan):
            pruned = G.rewrite(analysis, plan, check=False, keep_class=False)
            r = sum(p.numel() for p in pruned.parameters()) / whole
            return pruned, Measured(r, r, r, 1)
        return measure
    monkeypatch.setattr(latency, "cut_measure", fake_cut_measure)
    result = run_prune(model, (example,), task, policy, Schedule(epochs=1, lr=task.lr, evaluate_original=False),
                       torch.device("cpu"))
    fix = result.gates_report["fix"]
    assert asked == [2] and fix["latency_loop"]["rounds"][0]["aim"] == 0.6
    assert 1 <= len(fix["latency_loop"]["rounds"]) <= 3 and fix["step"] >= 1


def test_cut_measure_times_a_plan_against_the_unpruned_rewrite_built_at_the_first_call(monkeypatch):
    """With a clock that advances by each forward's parameter count the ratio is the parameter
    ratio of the plan's rewrite to the unpruned one; nothing is rewritten before the first call."""
    from gdp_graph.latency import cut_measure
    from gdp_graph.prune import rewrite as rewrite_module
    model, inputs = ZOO["mobilenetv2"]()
    analysis = G.analyze(model, inputs)
    ticks, built = [0.0], []
    made = rewrite_module.rewrite

    def count(module, args, out):
        ticks[0] += sum(p.numel() for p in module.parameters())

    def counting_rewrite(*args, **kwargs):
        out = made(*args, **kwargs)
        out.register_forward_hook(count)
        built.append(out)
        return out
    monkeypatch.setattr(rewrite_module, "rewrite", counting_rewrite)
    measure = cut_measure(analysis, LatencySettings(), rounds=2, repeat=1, clock=lambda: ticks[0])
    assert built == []  # nothing built or held while the gates would train
    plan = G.random_plan(analysis, 0.4, seed=0)
    pruned, m = measure(plan)
    whole = sum(p.numel() for p in built[0].parameters())
    assert m.ratio == pytest.approx(sum(p.numel() for p in pruned.parameters()) / whole) and len(built) == 2
    measure(plan)
    assert len(built) == 3  # the unpruned rewrite is built once
