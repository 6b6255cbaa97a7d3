"""The sparsity regularizers: values on hand-computable gates, gradients, and agreement of the
``gdp`` cost with the cost model's plan cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdp_graph.graph.analysis import analyze
from gdp_graph.graph.cost import CostModel
from gdp_graph.prune.plan import random_plan
from gdp_graph.gates.regularizers import REGULARIZERS, free_gate_vector, make_regularizer
from tests.zoo import ZOO


class Chain(nn.Module):
    """conv1 (2->4) -> conv2 (4->5) -> conv3 (5->3) on a 1x1 image: FLOPs 16, 40, 30 and
    parameters 8, 20, 15. Group 0 = conv1's outputs, group 1 = conv2's, group 2 = conv3's
    (frozen: they reach the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 1, bias=False)
        self.conv2 = nn.Conv2d(4, 5, 1, bias=False)
        self.conv3 = nn.Conv2d(5, 3, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


class Residual(nn.Module):
    """stem (2->4), one removable block (4->6->4) added to the stem, head (4->3)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 1, bias=False)
        self.a = nn.Conv2d(4, 6, 1, bias=False)
        self.b = nn.Conv2d(6, 4, 1, bias=False)
        self.head = nn.Conv2d(4, 3, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.b(torch.relu(self.a(x)))
        return self.head(x)


@pytest.fixture(scope="module")
def chain() -> CostModel:
    return CostModel(analyze(Chain(), (torch.randn(1, 2, 1, 1),)))


@pytest.fixture(scope="module")
def residual() -> CostModel:
    return CostModel(analyze(Residual(), (torch.randn(1, 2, 1, 1),)))


@pytest.fixture(scope="module")
def resnet() -> CostModel:
    model, inputs = ZOO["resnet_basic"]()
    return CostModel(analyze(model, inputs))


def chain_cost(m0: float, m1: float, metric: str = "flops") -> float:
    """The chain's remaining cost fraction for mean gates m0 (group 0) and m1 (group 1)."""
    c1, c2, c3 = (16.0, 40.0, 30.0) if metric == "flops" else (8.0, 20.0, 15.0)
    return (c1 * m0 + c2 * m0 * m1 + c3 * m1) / (c1 + c2 + c3)


def test_chain_layout(chain: CostModel) -> None:
    groups = chain.analysis.groups
    assert [g.size for g in groups] == [4, 5, 3]
    assert groups[0].prunable and groups[1].prunable and groups[2].fully_frozen
    assert chain.total.flops == 86.0 and chain.total.params == 43


# -- gdp ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["flops", "params"])
def test_gdp_hand_value(chain: CostModel, metric: str) -> None:
    g0 = torch.tensor([1.0, 0.5, 0.0, 1.0])  # mean 0.625
    g1 = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5])  # mean 0.5
    value = make_regularizer("gdp", chain, metric=metric)({0: g0, 1: g1}, {})
    assert value.item() == pytest.approx(chain_cost(0.625, 0.5, metric), rel=1e-6)


def test_gdp_all_ones_is_one(chain: CostModel, resnet: CostModel) -> None:
    for cm in (chain, resnet):
        gates = {g.id: torch.ones(g.size) for g in cm.analysis.groups}
        blocks = {b.id: torch.ones(()) for b in cm.analysis.blocks}
        for metric in ("flops", "params"):
            reg = make_regularizer("gdp", cm, metric=metric)
            assert reg(gates, blocks).item() == pytest.approx(1.0, rel=1e-6)
            assert reg({}, {}).item() == pytest.approx(1.0, rel=1e-6)


def test_gdp_is_bilinear_in_neighbouring_groups(chain: CostModel) -> None:
    """conv2's term scales with the mean gate of its input group times that of its output
    group: the mixed second difference isolates it."""
    reg = make_regularizer("gdp", chain)

    def at(a: float, b: float) -> float:
        return reg({0: torch.full((4,), a), 1: torch.full((5,), b)}, {}).item()

    assert at(1, 1) - at(1, 0) - at(0, 1) + at(0, 0) == pytest.approx(40 / 86, rel=1e-6)
    assert at(0.5, 0.4) == pytest.approx(chain_cost(0.5, 0.4), rel=1e-6)
    assert at(0.0, 0.0) == pytest.approx(0.0, abs=1e-7)


def test_gdp_gradient(chain: CostModel) -> None:
    g0 = torch.tensor([1.0, 0.5, 0.0, 1.0], requires_grad=True)
    g1 = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5], requires_grad=True)
    make_regularizer("gdp", chain)({0: g0, 1: g1}, {}).backward()
    # d/dg0_u = (16 + 40 m1) / (86 * 4), d/dg1_u = (40 m0 + 30) / (86 * 5)
    assert torch.allclose(g0.grad, torch.full((4,), (16 + 40 * 0.5) / (86 * 4)))
    assert torch.allclose(g1.grad, torch.full((5,), (40 * 0.625 + 30) / (86 * 5)))


def test_gdp_priced_by_units_counts_every_free_unit_alike(chain: CostModel, residual: CostModel) -> None:
    """``price="units"``: the mean gate over the free units, so every unit's gradient is the same
    whatever its layers cost (priced by cost, the chain's group 1 units cost more there)."""
    g0 = torch.tensor([1.0, 0.5, 0.0, 1.0], requires_grad=True)
    g1 = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5], requires_grad=True)
    reg = make_regularizer("gdp", chain, price="units")
    value = reg({0: g0, 1: g1}, {})
    value.backward()
    assert value.item() == pytest.approx(5.0 / 9)
    assert torch.allclose(torch.cat([g0.grad, g1.grad]), torch.full((9,), 1 / 9))
    h0, h1 = g0.detach().requires_grad_(), g1.detach().requires_grad_()
    make_regularizer("gdp", chain)({0: h0, 1: h1}, {}).backward()
    assert float(h1.grad[0]) > float(h0.grad[0])  # priced by cost, the same gates differ
    block = torch.tensor(0.25, requires_grad=True)
    gates = {g: torch.ones(residual.analysis.groups[g].size) for g in range(len(residual.analysis.groups))}
    by_units = make_regularizer("gdp", residual, price="units")(gates, {0: block})
    free = free_gate_vector(residual, gates, {0: block})
    assert by_units.item() == pytest.approx(float(free.mean()))  # the block gate is one unit too


def test_gdp_block_gate_scales_the_branch(residual: CostModel) -> None:
    analysis = residual.analysis
    assert len(analysis.blocks) == 1
    flops = dict(zip(residual.node_names, residual.term_flops.tolist()))
    branch = sum(flops[n] for n in analysis.blocks[0].nodes if n in flops)
    assert branch > 0
    block = torch.tensor(0.25, requires_grad=True)
    value = make_regularizer("gdp", residual)({}, {0: block})
    assert value.item() == pytest.approx(1.0 - 0.75 * branch / residual.total.flops, rel=1e-6)
    value.backward()
    assert block.grad.item() == pytest.approx(branch / residual.total.flops, rel=1e-6)


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv2", "vit"])
def test_gdp_with_plan_gates_equals_plan_cost(name: str) -> None:
    model, inputs = ZOO[name]()
    cm = CostModel(analyze(model, inputs))
    plan = random_plan(cm.analysis, 0.4, seed=1, block_ratio=0.5 if cm.analysis.blocks else None)
    gates = {}
    for gid, kept in plan.keep.items():
        gates[gid] = torch.zeros(cm.analysis.groups[gid].size, dtype=torch.float64)
        gates[gid][list(kept)] = 1.0
    blocks = {b.id: torch.tensor(0.0 if b.id in plan.removed_blocks else 1.0, dtype=torch.float64)
              for b in cm.analysis.blocks}
    expected = cm.plan_cost(plan.keep, sorted(plan.removed_blocks))
    for metric in ("flops", "params"):
        value = make_regularizer("gdp", cm, metric=metric)(gates, blocks)
        assert value.dtype == torch.float64
        total = cm.total.metric(metric)
        slack = 0.5 / total if metric == "params" else 0.0  # plan_cost rounds parameters to an int
        assert value.item() == pytest.approx(expected.metric(metric) / total, rel=1e-9, abs=slack)
        assert value.item() < 1.0


# -- polarization -------------------------------------------------------------------------------
def test_polarization_hand_value(chain: CostModel) -> None:
    # free gates [1, .5, 0, 1]: mean .625, ||g||_1 = 2.5, ||g - mean||_1 = 1.5
    g0 = torch.tensor([1.0, 0.5, 0.0, 1.0])
    for t in (0.8, 1.2):
        value = make_regularizer("polarization", chain, t=t)({0: g0}, {})
        assert value.item() == pytest.approx((t * 2.5 - 1.5) / 4, rel=1e-6)


def test_polarization_clamps_and_concatenates_all_gates(chain: CostModel, residual: CostModel) -> None:
    reg = make_regularizer("polarization", chain, t=1.0)
    clamped = reg({0: torch.tensor([1.4, 0.5, -0.3, 1.0])}, {})
    assert clamped.item() == pytest.approx((2.5 - 1.5) / 4, rel=1e-6)
    # the mean is over both groups' units together: five ones and four zeros -> mean 5/9
    both = reg({0: torch.tensor([1.0, 0.0, 1.0, 1.0]), 1: torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])}, {})
    dev = 5 * (4 / 9) + 4 * (5 / 9)
    assert both.item() == pytest.approx((5 - dev) / 9, rel=1e-6)
    # a block gate is one more entry
    stem_id = next(g.id for g in residual.analysis.groups if "stem" in g.modules and g.prunable)
    size = residual.analysis.groups[stem_id].size
    value = make_regularizer("polarization", residual, t=1.0)({stem_id: torch.ones(size)}, {0: torch.tensor(0.0)})
    n = size + 1
    mean = size / n
    assert value.item() == pytest.approx((size - (size * (1 - mean) + mean)) / n, rel=1e-6)


def test_frozen_units_are_left_out(chain: CostModel) -> None:
    g0 = torch.tensor([1.0, 0.5, 0.0, 1.0])
    for name in ("polarization", "l1"):
        reg = make_regularizer(name, chain)
        assert reg({0: g0, 2: torch.ones(3)}, {}).item() == pytest.approx(reg({0: g0}, {}).item())
    assert free_gate_vector(chain, {0: g0, 2: torch.ones(3)}, {}).tolist() == g0.tolist()


@pytest.mark.parametrize("t", [0.6, 0.8, 1.0, 1.2, 1.4])
def test_polarization_pushes_gates_apart(chain: CostModel, t: float) -> None:
    """Descending the gradient moves gates above the mean up relative to gates below it."""
    torch.manual_seed(0)
    g0 = torch.rand(4).mul(0.9).add(0.05).requires_grad_()
    g1 = torch.rand(5).mul(0.9).add(0.05).requires_grad_()
    make_regularizer("polarization", chain, t=t)({0: g0, 1: g1}, {}).backward()
    gates, grads = torch.cat([g0, g1]).detach(), torch.cat([g0.grad, g1.grad])
    above, below = gates > gates.mean(), gates < gates.mean()
    assert above.any() and below.any()
    assert grads[above].max() < grads[below].min()
    assert (grads[below] - grads[above].max()).min().item() == pytest.approx(2 / 9, rel=1e-5)
    # below the mean the penalty always shrinks the gate
    assert (grads[below] > 0).all()


# -- l1 -----------------------------------------------------------------------------------------
def test_l1_value_and_gradient(chain: CostModel, residual: CostModel) -> None:
    g0 = torch.tensor([1.0, 0.5, 0.0, 1.0], requires_grad=True)
    value = make_regularizer("l1", chain)({0: g0}, {})
    assert value.item() == pytest.approx(2.5 / 4)
    value.backward()
    assert torch.allclose(g0.grad[[0, 1, 3]], torch.full((3,), 0.25))  # every nonzero gate is pushed down
    block = torch.tensor(0.5, requires_grad=True)
    stem_id = next(g.id for g in residual.analysis.groups if "stem" in g.modules and g.prunable)
    size = residual.analysis.groups[stem_id].size
    units = torch.full((size,), 0.2, requires_grad=True)
    value = make_regularizer("l1", residual)({stem_id: units}, {0: block})
    assert value.item() == pytest.approx((0.2 * size + 0.5) / (size + 1))
    value.backward()
    assert block.grad.item() > 0 and (units.grad > 0).all()


def test_no_gates(chain: CostModel) -> None:
    for name in ("polarization", "l1"):
        value = make_regularizer(name, chain)({}, {})
        assert value.item() == 0.0


# -- errors -------------------------------------------------------------------------------------
def test_unknown_name_lists_the_allowed_ones(chain: CostModel) -> None:
    with pytest.raises(ValueError, match="'gdp', 'polarization', 'l1'"):
        make_regularizer("l0", chain)
    assert set(REGULARIZERS) == {"gdp", "polarization", "l1"}


def test_invalid_arguments(chain: CostModel) -> None:
    with pytest.raises(ValueError, match="metric"):
        make_regularizer("gdp", chain, metric="latency")
    with pytest.raises(ValueError, match="unknown price 'flops'"):
        make_regularizer("gdp", chain, price="flops")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="t must be"):
            make_regularizer("polarization", chain, t=bad)
    reg = make_regularizer("gdp", chain)
    with pytest.raises(ValueError, match="group 0: 3 gates for 4 units"):
        reg({0: torch.ones(3)}, {})
    with pytest.raises(ValueError, match="group 7"):
        reg({7: torch.ones(3)}, {})
    with pytest.raises(ValueError, match="block 0"):
        reg({}, {0: torch.ones(())})


def test_dtype_follows_the_gates(chain: CostModel) -> None:
    for name in REGULARIZERS:
        reg = make_regularizer(name, chain)
        assert reg({0: torch.ones(4, dtype=torch.float64)}, {}).dtype == torch.float64
        assert reg({0: torch.ones(4, dtype=torch.bfloat16)}, {}).dtype == torch.float32


def test_registry_implements_exactly_the_shared_vocabulary():
    from gdp_graph import vocabulary
    from gdp_graph.policy.schema import REGULARIZER_SPEC
    assert tuple(REGULARIZERS) == vocabulary.REGULARIZERS
    assert tuple(REGULARIZER_SPEC.fields["name"].spec.values) == vocabulary.REGULARIZERS
