"""The latency metric (gdp_graph.latency): a table timed on the model's own nodes at a grid of
widths, cached by key, fitted by interpolation, and used wherever a metric name is taken. Every
test injects a fake timer (seconds from the tensor sizes a node reads and writes), so nothing
depends on this machine's speed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import pytest
import torch
import torch.fx as fx

import gdp_graph as G
from gdp_graph.gates.budget import hard_fraction, soft_fraction
from gdp_graph.gates.regularizers import make_regularizer
from gdp_graph.gates.selection import plan_for_budget, plan_fraction
from gdp_graph.graph.cost import CostModel
from gdp_graph.latency import (LatencySettings, LatencyTable, attach_latency, build_table, grid_plan, load_or_build,
                               table_key)
from gdp_graph.latency.build import _batched, mixed_plan
from gdp_graph.latency.timing import fastest_run, time_nodes
from gdp_graph.policy import policy_from_dict, resolve
from tests.zoo import ZOO

OVERHEAD = 1e-6  # per node: small layers cost more than their size says
REMAINDER = (1.1, 2e-5)  # a whole forward takes longer than its nodes: in proportion, and per forward


def _size(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (tuple, list)):
        return sum(_size(v) for v in value)
    return 0


class FakeTimer:
    """Seconds from sizes: a node costs OVERHEAD plus 1 ns per element it writes (not its FLOPs).
    Counts how often it was asked."""

    passes = 2

    def __init__(self):
        self.calls = 0

    def node(self, node: fx.Node, call: Callable[[], Any]) -> tuple[Any, float]:
        self.calls += 1
        out = call()
        return out, OVERHEAD + 1e-9 * _size(out)

    def model(self, module, inputs) -> float:
        return sum(time_nodes(module, inputs, self).values()) * REMAINDER[0] + REMAINDER[1]


def _analysis(name: str = "mobilenetv2"):
    model, inputs = ZOO[name]()
    return G.analyze(model, inputs)


@pytest.fixture(scope="module")
def mobilenet():
    analysis = _analysis()
    cost = CostModel(analysis)
    table = build_table(analysis, LatencySettings(points=4), cost_model=cost, timer=FakeTimer())
    return analysis, attach_latency(cost, table), table


def _measured(analysis, plan) -> float:
    """What the fake timer says of the rewritten model (the table's ground truth)."""
    pruned = G.rewrite(analysis, plan, check=False, keep_class=False)
    return FakeTimer().model(pruned, _batched(analysis.traced.example_inputs, 1))  # the table's batch


def test_prediction_matches_measurement_at_the_grid_widths(mobilenet):
    analysis, cost, table = mobilenet
    assert cost.total.latency == pytest.approx(table.whole_s, rel=0.01)
    assert table.whole_s == pytest.approx(_measured(analysis, G.PruningPlan(keep={})), rel=1e-9)
    for fraction in table.fractions[1:]:
        plan = grid_plan(analysis, fraction)
        assert plan.keep, "the grid prunes something"
        predicted = cost.plan_cost(plan.keep, plan.removed_blocks).latency
        # exact but for the mixed widths' points, which share scales with the grid's
        assert predicted == pytest.approx(_measured(analysis, plan), rel=0.03)
    mixed = mixed_plan(analysis, table.fractions, seed=0)
    assert {len(k) for k in mixed.keep.values()} != {len(k) for k in grid_plan(analysis, 0.5).keep.values()}
    assert cost.plan_cost(mixed.keep, ()).latency == pytest.approx(_measured(analysis, mixed), rel=0.03)


def test_prediction_between_grid_widths_is_close(mobilenet):
    analysis, cost, _ = mobilenet
    plan = G.random_plan(analysis, 0.4, seed=3)
    predicted = cost.plan_cost(plan.keep, plan.removed_blocks).latency
    measured = _measured(analysis, plan)
    assert predicted == pytest.approx(measured, rel=0.1)
    assert predicted < cost.total.latency


def test_removed_blocks_take_no_time():
    analysis = _analysis("resnet_basic")
    cost = CostModel(analysis)
    attach_latency(cost, build_table(analysis, LatencySettings(points=2), cost_model=cost, timer=FakeTimer()))
    block = next(b.id for b in analysis.blocks if b.prunable)
    plan = G.PruningPlan(keep={}, removed_blocks=frozenset({block}))
    predicted = cost.plan_cost(plan.keep, plan.removed_blocks).latency
    assert predicted < cost.total.latency
    assert predicted == pytest.approx(_measured(analysis, plan), rel=0.05)


def test_latency_regularizer_is_differentiable(mobilenet):
    analysis, cost, _ = mobilenet
    reg = make_regularizer("gdp", cost, metric="latency")
    gid = analysis.prunable_groups()[2].id
    gates = {gid: torch.full((analysis.groups[gid].size,), 0.6, requires_grad=True)}
    value = reg(gates, {})
    value.backward()
    assert 0 < float(value.detach()) < 1
    assert bool((gates[gid].grad > 0).all())
    assert float(reg({}, {})) == pytest.approx(1.0)
    assert soft_fraction(cost, gates, {}, metric="latency") == pytest.approx(float(value), rel=1e-5)
    assert hard_fraction(cost, gates, {}, threshold=0.5, metric="latency") == pytest.approx(1.0)


def test_plan_for_budget_meets_a_latency_target(mobilenet):
    analysis, cost, _ = mobilenet
    resolution = resolve(policy_from_dict({"version": 1, "target": {"metric": "latency", "fraction": 0.6}}),
                         analysis.groups, analysis.blocks)
    scores = {gid: torch.rand(analysis.groups[gid].size, generator=torch.Generator().manual_seed(gid))
              for gid in resolution.gated_groups()}
    plan, kept = plan_for_budget(analysis, cost, resolution, scores, 0.6, metric="latency")
    assert kept == pytest.approx(plan_fraction(cost, plan, "latency"))
    assert abs(kept - 0.6) < 0.03
    assert _measured(analysis, plan) / cost.total.latency == pytest.approx(kept, abs=0.05)


def test_table_round_trips_through_json(mobilenet, tmp_path):
    _, _, table = mobilenet
    again = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert again == table


def test_cache_is_reused_and_keyed(tmp_path):
    analysis = _analysis("resnet_basic")
    settings = LatencySettings(points=2, cache=str(tmp_path))
    first = FakeTimer()
    table = load_or_build(analysis, settings, timer=first, show_progress=False)
    assert first.calls > 0 and len(list(tmp_path.glob("*.json"))) == 1
    second = FakeTimer()
    assert load_or_build(analysis, settings, timer=second, show_progress=False) == table
    assert second.calls == 0
    other = replace(settings, threads=2)
    assert table_key(analysis, other) != table_key(analysis, settings)
    load_or_build(analysis, other, timer=FakeTimer(), show_progress=False)
    assert len(list(tmp_path.glob("*.json"))) == 2
    for path in tmp_path.glob("*.json"):  # a damaged file is measured again, not trusted
        path.write_text("{not json")
    third = FakeTimer()
    load_or_build(analysis, settings, timer=third, show_progress=False)
    assert third.calls > 0


_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: {model}
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 1
cache size\t: 16384 KB
flags\t\t: fpu sse2 avx2 {flags}

processor\t: 1
model name\t: another CPU
"""


def test_one_model_name_on_two_hosts_is_two_devices(monkeypatch):
    """Virtual machines name different hosts alike: the cache key tells them apart by family,
    model, stepping, cache and the flags that pick kernels (a table of one host is not reused on
    the other)."""
    from gdp_graph.latency import cache

    old = _CPUINFO.format(model=85, flags="avx512f avx512_vnni")
    new = _CPUINFO.format(model=143, flags="avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16")
    name, details = cache.cpu_identity(old)
    assert name == "Intel(R) Xeon(R) Processor"  # the first processor's block only
    assert details == "cpu family 6, model 85, stepping 1, cache size 16384 KB, avx2, avx512f, avx512_vnni"
    assert cache.cpu_identity(new)[1].endswith("avx512_bf16, amx_tile, amx_bf16")
    keys, parse = [], cache.cpu_identity
    for text in (old, new):
        monkeypatch.setattr(cache, "cpu_identity", lambda text=text: parse(text))
        keys.append(cache.device_name("cpu"))
    assert keys[0] != keys[1] and all(k.startswith("cpu:Intel(R) Xeon(R) Processor [cpu family 6") for k in keys)


def test_a_node_keeps_its_fastest_pass():
    runs = [{"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 9.0}, {"a": 9.0}]
    assert fastest_run(runs) == {"a": 1.0, "b": 1.0}


def test_policy_latency_section():
    policy = policy_from_dict({"version": 1, "target": {"metric": "latency", "fraction": 0.5},
                               "latency": {"threads": 2, "batch": 4, "memory_format": "channels_last",
                                           "cache": "/tmp/x"}})
    assert policy.target.metric == "latency"
    assert policy.latency == LatencySettings(threads=2, batch=4, memory_format="channels_last", cache="/tmp/x")
    assert policy_from_dict(policy.to_dict()) == policy
    with pytest.raises(G.GdpError, match="memory_format"):
        policy_from_dict({"version": 1, "latency": {"memory_format": "nhwc"}})


def test_latency_metric_without_a_table_says_so():
    analysis = _analysis("resnet_basic")
    cost = CostModel(analysis)
    with pytest.raises(ValueError, match="latency"):
        cost.total.metric("latency")


def test_interpolation_goes_through_the_points_and_is_flat_outside():
    from types import SimpleNamespace
    from gdp_graph.latency import LatencyFit
    table = LatencyTable(key={}, whole_s=3.0, points={"a": ((1.0, 1.0), (0.5, 2.0), (0.5, 4.0)), "b": ((1.0, 0.5),)})
    fit = LatencyFit(SimpleNamespace(node_names=["a", "b"]), table)  # type: ignore[arg-type]
    seconds = [fit.per_term(torch.tensor([s, s], dtype=torch.float64), torch.ones(2, dtype=torch.float64)).tolist()
               for s in (0.1, 0.5, 0.75, 1.0)]
    # a: 3.0 at 0.5 (two measurements averaged; slower at the smaller width is kept), flat below
    assert seconds == [[3.0, 0.5], [3.0, 0.5], [2.0, 0.5], [1.0, 0.5]]
    assert fit.remainder_scale == pytest.approx(2.0)  # the whole model over its nodes at full width
    assert float(fit.evaluate(torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))) == 3.0


def test_gated_model_trains_against_the_cached_latency_table(tmp_path):
    model, inputs = ZOO["resnet_basic"]()
    policy = {"version": 1, "target": {"metric": "latency", "fraction": 0.5},
              "latency": {"cache": str(tmp_path), "points": 2}}
    timer = FakeTimer()  # the table GatedModel finds in the cache is the fake one
    load_or_build(G.analyze(model, inputs), policy_from_dict(policy).latency, timer=timer, show_progress=False)
    gated = G.attach(model, policy, example_inputs=inputs, total_steps=50)
    assert gated.cost_model.latency is not None and gated.cost_model.latency.table.key["points"] == 2
    hard, soft = gated.fractions()
    assert hard >= 0.99 and 0 < soft <= 1.0  # the ranked start (init: magnitude) puts the last unit at ~0.5
    optimizer = gated.gate_optimizer()
    for _ in range(20):  # the penalty alone: the gates fall, the soft latency with them
        optimizer.zero_grad()
        gated.penalty().backward()
        optimizer.step()
    assert gated.fractions()[1] < soft


def test_channel_step_finds_the_staircase_and_ignores_single_spikes():
    from gdp_graph.latency.probe import channel_step
    widths = list(range(20, 90))
    stairs = [1.0 + (w - 1) // 16 for w in widths]  # flat within blocks of 16 channels
    assert channel_step(stairs, widths) == 16
    spiky = list(stairs)
    spiky[widths.index(40)] *= 3  # one slow measurement is not an edge
    assert channel_step(spiky, widths) == 16
    assert channel_step([1.0 + 0.01 * w for w in widths], widths) == 1  # smooth: no preference


def test_latency_is_measured_with_freed_memory_held_and_tables_say_so(monkeypatch):
    """glibc's trim and mmap thresholds are fixed before anything is timed (a fresh process
    otherwise measures page faults a running one does not pay), and the table's cache key
    records it, so a table timed before is not reused."""
    import platform
    import sys
    from gdp_graph.latency import allocator, interleaved
    from gdp_graph.latency.cache import table_key
    called = []
    allocator.hold_freed_memory.cache_clear()
    monkeypatch.setattr(interleaved, "hold_freed_memory", lambda: called.append(1) or "held")
    model = torch.nn.Linear(4, 4)
    interleaved.time_models([model, model], (torch.randn(1, 4),), rounds=1, warmup=0)
    assert called == [1]
    state = allocator.hold_freed_memory()
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert state == ("held" if glibc else "system")
    assert allocator.hold_freed_memory() is state  # once per process
    analysis = G.analyze(model, (torch.randn(1, 4),))
    assert table_key(analysis, LatencySettings())["allocator"] == state
