"""Per-layer before/after figures: channels in and out, parameters and FLOPs per sample.

The pruned model keeps the qualified names of the layers that survive, so layers are matched
by name; a layer missing from the pruned model was removed with its block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class LayerFigures:
    kind: str
    channels_in: Optional[int]
    channels_out: Optional[int]
    params: int
    flops: Optional[float]  #: per sample; None where the model runs no submodules (see layer_figures)


def _channels(module: nn.Module) -> tuple[Optional[int], Optional[int]]:
    for ins, outs in (("in_channels", "out_channels"), ("in_features", "out_features"),
                      ("num_features", "num_features"), ("num_embeddings", "embedding_dim"),
                      ("num_channels", "num_channels")):
        if hasattr(module, ins) and hasattr(module, outs):
            return getattr(module, ins), getattr(module, outs)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
        return int(weight.shape[1]), int(weight.shape[0])
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return int(weight.shape[0]), int(weight.shape[0])
    return None, None


Inputs = Union[Sequence[Any], Mapping[str, Any]]


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """``model(**inputs)`` for keyword inputs (a dict, as Hugging Face models take), else ``model(*inputs)``."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(*inputs)


def batch_of(inputs: Inputs) -> int:
    """The example batch's size: the leading dim of the first tensor input."""
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    first = next((v for v in values if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return int(first.shape[0]) if first is not None else 1


def _count(model: nn.Module, inputs: Inputs) -> FlopCounterMode:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call_model(model, inputs)
    finally:
        model.train(was_training)
    return counter


def total_figures(model: nn.Module, inputs: Inputs) -> tuple[float, int]:
    """(FLOPs per sample, parameters) of the whole model (shared parameters once)."""
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return float(_count(model, inputs).get_total_flops()) / batch_of(inputs), params


def layer_figures(model: nn.Module, inputs: Inputs) -> dict[str, LayerFigures]:
    """Figures of every leaf module that holds parameters, keyed by qualified name."""
    by_module = _count(model, inputs).get_flop_counts()
    flops = {key.partition(".")[2]: sum(counts.values()) for key, counts in by_module.items() if "." in key}
    # a graph that calls ops on parameters directly (the torch.export front end) runs no
    # submodule, so FLOPs cannot be attributed to layers: say so rather than print zeros
    attributed = bool(flops)
    n = batch_of(inputs)
    out = {}
    for name, module in model.named_modules():
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if not name or next(module.children(), None) is not None or not params:
            continue
        cin, cout = _channels(module)
        out[name] = LayerFigures(type(module).__name__, cin, cout, params,
                                 float(flops.get(name, 0)) / n if attributed else None)
    return out


def compare_layers(original: nn.Module, pruned: nn.Module, inputs: Inputs) -> list[dict[str, Any]]:
    """One row per layer of ``original``: its figures before and after (None when removed)."""
    before, after = layer_figures(original, inputs), layer_figures(pruned, inputs)
    return [{"layer": name, "before": asdict(b), "after": asdict(after[name]) if name in after else None}
            for name, b in before.items()]


def layers_table(rows: Sequence[dict[str, Any]], *, changed_only: bool = True) -> Table:
    table = Table(title="Per layer (FLOPs per sample)", header_style="bold")
    for column, justify in (("layer", "left"), ("type", "left"), ("in", "right"), ("out", "right"),
                            ("params", "right"), ("FLOPs", "right"), ("kept", "right")):
        table.add_column(column, justify=justify)

    def pair(key: str, b: dict, a: Optional[dict]) -> str:
        if a is None:
            return f"{b[key]} → -"
        return str(b[key]) if a[key] == b[key] else f"{b[key]} → {a[key]}"

    for row in rows:
        b, a = row["before"], row["after"]
        if changed_only and a is not None and a == b:
            continue
        def flops(f: Optional[dict]) -> str:
            return "0" if f is None else "n/a" if f["flops"] is None else f"{f['flops']:,.0f}"

        by_flops = a is not None and b["flops"] and a["flops"] is not None
        kept = "removed" if a is None else (f"{a['flops'] / b['flops']:.2f}" if by_flops else
                                            f"{a['params'] / b['params']:.2f}")
        table.add_row(row["layer"], b["kind"], pair("channels_in", b, a), pair("channels_out", b, a),
                      pair("params", b, a), f"{flops(b)} → {flops(a)}", kept, style="dim" if a is None else None)
    return table
