"""The latency of a cost model's terms, fitted to a table: per node, the piecewise linear
function of its scale through the measured points; the whole model's remainder (what a whole
forward takes beyond its nodes) scales them all.
Differentiable in the scales, so the ``gdp`` regularizer can train against it."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import CostModel
from gdp_graph.latency.table import LatencyTable


def knots(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Sorted distinct scales and the seconds measured there (repeated scales averaged). Not
    smoothed into a monotone curve: a layer can be slower at a smaller width (a kernel the
    hardware handles worse), and that is what the table is for."""
    by_scale: dict[float, list[float]] = {}
    for s, t in points:
        by_scale.setdefault(round(float(s), 12), []).append(float(t))
    xs = sorted(by_scale)
    means = [sum(by_scale[x]) / len(by_scale[x]) for x in xs]
    return xs, means


class LatencyFit:
    """Per-term interpolation tables aligned with ``cost_model.node_names``; ``total`` is the
    measured whole model. Implements :class:`gdp_graph.graph.cost.TermLatency`."""

    def __init__(self, cost_model: CostModel, table: LatencyTable):
        fitted = [knots(table.points.get(name, ())) for name in cost_model.node_names]
        width = max([len(xs) for xs, _ in fitted] + [2])
        xs_all, ys_all = [], []
        for xs, ys in fitted:
            if not xs:
                xs, ys = [1.0], [0.0]  # a node the table never saw (none in a table built on this graph)
            pad = width - len(xs)  # flat beyond the last knot, strictly increasing abscissae
            xs_all.append(xs + [xs[-1] + 1.0 + i for i in range(pad)])
            ys_all.append(ys + [ys[-1]] * pad)
        self.xs = torch.tensor(xs_all, dtype=torch.float64).reshape(len(fitted), width)
        self.ys = torch.tensor(ys_all, dtype=torch.float64).reshape(len(fitted), width)
        self.table = table
        full = float(self._interpolate(torch.ones(len(fitted), dtype=torch.float64)).sum()) if fitted else 0.0
        #: the whole model's time over its nodes' sum at full width
        self.remainder_scale = float(table.whole_s / full) if full > 0 else 1.0
        # the same ratio at every grid width, against the nodes' sum there: a whole forward took
        # 20% longer than its nodes at full width and 34% at 1/8 (RegNetY-400MF, CPU time), partly
        # in proportion to the work, partly per node
        pairs = sorted((x, w / x) for x, w in table.whole_points if x > 0) or [(max(full, 1e-12), self.remainder_scale)]
        self._sums = torch.tensor([x for x, _ in pairs], dtype=torch.float64)
        self._ratios = torch.tensor([r for _, r in pairs], dtype=torch.float64)
        ones = torch.ones(len(fitted), dtype=torch.float64)
        self.total = float(self.evaluate(ones, ones)) if fitted else float(table.whole_s)

    def _interpolate(self, scales: Tensor) -> Tensor:
        xs, ys = self.xs.to(scales), self.ys.to(scales)
        if xs.shape[0] == 0:
            return scales
        # below the smallest width measured: flat (nothing measured says it gets faster; a slope
        # extrapolated from two noisy points could say anything)
        scales = torch.maximum(scales, xs[:, 0])
        idx = torch.searchsorted(xs, scales.detach().reshape(-1, 1).contiguous()).clamp(1, xs.shape[1] - 1)
        x0, x1 = xs.gather(1, idx - 1).squeeze(1), xs.gather(1, idx).squeeze(1)
        y0, y1 = ys.gather(1, idx - 1).squeeze(1), ys.gather(1, idx).squeeze(1)
        return (y0 + (y1 - y0) / (x1 - x0) * (scales - x0)).clamp_min(0.0)

    def per_term(self, scales: Tensor, block_scale: Tensor) -> Tensor:
        """Each term's predicted seconds."""
        return self._interpolate(scales) * block_scale

    def evaluate(self, scales: Tensor, block_scale: Tensor) -> Tensor:
        """Predicted seconds per forward of the model at these term scales: the nodes' sum times
        the whole model's ratio to it, interpolated between the grid widths (flat outside)."""
        nodes = self.per_term(scales, block_scale).sum()
        return nodes * _piecewise(self._sums.to(nodes), self._ratios.to(nodes), nodes)


def _piecewise(xs: Tensor, ys: Tensor, x: Tensor) -> Tensor:
    """Linear interpolation of (xs, ys) at the scalar ``x``, flat outside; xs ascending."""
    if xs.numel() == 1:
        return ys[0] + 0.0 * x
    xc = torch.minimum(torch.maximum(x, xs[0]), xs[-1])
    i = int(torch.searchsorted(xs, xc.detach().reshape(1)).clamp(1, xs.numel() - 1))
    if xs[i] == xs[i - 1]:
        return ys[i] + 0.0 * x
    return ys[i - 1] + (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1]) * (xc - xs[i - 1])


def attach_latency(cost_model: CostModel, table: LatencyTable) -> CostModel:
    """Give ``cost_model`` the ``latency`` metric from ``table`` (built on the same graph);
    returns it."""
    cost_model.latency = LatencyFit(cost_model, table)
    return cost_model


def latency_cost_model(analysis: Analysis, settings=None, **kwargs) -> CostModel:
    """A :class:`CostModel` of ``analysis`` with the latency table of ``settings`` attached (from
    the cache, else measured now; see :func:`gdp_graph.latency.cache.load_or_build`)."""
    from gdp_graph.latency.cache import load_or_build
    cost_model = CostModel(analysis)
    return attach_latency(cost_model, load_or_build(analysis, settings, cost_model=cost_model, **kwargs))
