"""Per-unit importance scores on the analysis graph, one entry point: :func:`score_units`.

Every method returns a :class:`Scores`: one float64 score per unit of every group it can
score (higher = more important), and, where the method measures them, one score per removable
block. Scores are computed on the analysis' traced graph (``analysis.traced.gm``, which shares
the user's weights) or on a private copy of it; the user's model is never modified and no
``.grad`` is left on its parameters.

Methods (:data:`METHODS`):

``magnitude``
    No data. The plain (not squared) L2 norm of everything that belongs to a unit across the
    group's members: the slices of every member that is a parameter (the rows a layer produces,
    per-channel norm parameters) along the member's dimension, and the input columns of every
    plain convolution / linear layer where the group's gates sit (the layers that consume the
    unit). A member whose length along that dimension differs from what the analysis labelled
    raises :class:`ImportanceError` (nothing is truncated).
``activation``
    Calibration batches, no loss (Minitron, Muralidharan et al. 2024): the mean ``|activation|``
    of each unit at the group's gate sites (the inputs of the layers that consume it), averaged
    over positions, batches and sites. Blocks: see ``depth``.
``taylor``
    Task batches and a loss (first-order Taylor, Molchanov et al. 2019): gates fixed at 1 are
    inserted at the gate sites (the same sites GDP trains), and each unit scores
    ``|dL/dg * g| = |dL/dg|``, the absolute gradient of the loss with respect to its gate,
    averaged over batches (the absolute value is taken per batch). Removable blocks score the
    same way through one gate per block (``|dL/dg_block|``).
``depth``
    Calibration batches, no loss: block importance only (Minitron's depth score,
    "ShortGPT"-style): ``1 - cos(shortcut, output)`` at the residual add of every removable
    block, with cosine taken per sample over the flattened tensors, averaged over samples and
    batches. A block that barely changes its input scores near 0. Chosen over "loss change
    when the block's gate is 0" because it needs one forward pass for all blocks instead of
    one per block. ``activation`` returns these block scores too.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from gdp_graph.graph.analysis import Analysis
from gdp_graph.importance.common import METHODS, ImportanceError, InputsFn, LossFn, Scores
from gdp_graph.importance.magnitude import magnitude_scores
from gdp_graph.importance.observe import activation_scores
from gdp_graph.importance.taylor import taylor_scores

__all__ = ["METHODS", "ImportanceError", "Scores", "score_units", "magnitude_scores"]


def score_units(analysis: Analysis, method: str, batches: Optional[Iterable[Any]] = None,
                loss_fn: Optional[LossFn] = None, *, inputs: Optional[InputsFn] = None,
                max_batches: Optional[int] = None) -> Scores:
    """Score every group's units (and blocks, see the module docstring) by ``method``.

    Args:
        analysis: from :func:`gdp_graph.analyze`; its traced graph holds the weights scored.
        method: one of :data:`METHODS`.
        batches: calibration (``activation``, ``depth``) or task (``taylor``) batches.
        loss_fn: ``loss_fn(output, batch)``, a scalar tensor (``taylor`` only).
        inputs: how a batch feeds the model (default: a tuple/list batch feeds its first
            element, a dict batch its items as keywords, a tensor is the input itself).
        max_batches: stop after this many batches.

    Raises:
        ImportanceError: unknown method, missing batches or loss, no batch at all, or a
            member whose size does not match the analysis.

    Example::

        scores = score_units(analysis, "taylor", loader, lambda out, b: F.cross_entropy(out, b[1]),
                             max_batches=8)
        plan, kept = one_shot_plan(analysis, scores, resolution, target=0.5)
    """
    if method not in METHODS:
        raise ImportanceError(f"unknown importance method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "magnitude":
        return Scores("magnitude", magnitude_scores(analysis))
    if batches is None:
        raise ImportanceError(f"importance method {method!r} needs batches (calibration or task data)")
    if method == "taylor":
        if loss_fn is None:
            raise ImportanceError("importance method 'taylor' needs loss_fn(output, batch)")
        units, blocks, n = taylor_scores(analysis, batches, loss_fn, inputs=inputs, max_batches=max_batches)
        return Scores("taylor", units, blocks, n)
    units, blocks, n = activation_scores(analysis, batches, inputs=inputs, max_batches=max_batches,
                                         with_units=method == "activation")
    return Scores(method, units, blocks, n)
