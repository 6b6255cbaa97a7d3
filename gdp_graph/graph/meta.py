"""Keys of the facts the analysis leaves in ``node.meta`` of the traced graph, and what one of
them says about a node (:func:`returned_input`)."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx


#: the node's concrete value on the example inputs (set by the recording run of :mod:`.trace`)
VALUE = "gdp_value"
#: the node's value holds its shape, dtype and layout but no real numbers (:mod:`.shapes_only`)
SHAPE_ONLY = "gdp_shape_only"
#: the node's channels (set by the propagation of :mod:`.analysis`)
CHANNELS = "channels"


def returned_input(node: fx.Node, module: Any = None) -> Optional[fx.Node]:
    """The one tensor input that ``node`` handed back as is (the very object) on the example
    inputs, or None: torchvision's ``stochastic_depth`` in eval mode, a drop-path module, a
    logging hook. An in-place op (a name ending in ``_``, a module with ``inplace=True``) also
    returns its input object, changed: None."""
    tensors = [a for a in node.args if isinstance(a, fx.Node) and isinstance(a.meta.get(VALUE), torch.Tensor)]
    if len(tensors) != 1 or node.meta.get(VALUE) is not tensors[0].meta.get(VALUE):
        return None
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name.endswith("_") or getattr(module, "inplace", False):
        return None
    return tensors[0]
