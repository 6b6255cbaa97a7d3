"""A pruned Hugging Face model as a ``save_pretrained`` folder that plain transformers loads.

:func:`save_hf` writes ``folder`` from the pruned model of the user's class (what ``rewrite``
and ``finalize`` return by default), the analysis and the plan:

* **uniform** (every kept layer keeps the same heads and MLP width, and the class builds the
  pruned shapes from the config of :func:`~gdp_graph.prune.hf_config.pruned_hf_config`): a
  plain folder, ``AutoModelForCausalLM.from_pretrained(folder)`` loads it;
* **not uniform** (layers keep different widths, or the class derives a size from others, as
  GPT-2 derives ``head_dim`` from ``n_embd / n_head``): the config keeps the largest sizes and
  adds ``gdp_pruned`` (the shapes of the parameters that differ and the number attributes of
  the modules that the pruning changed), and the folder holds ``modeling_gdp_pruned.py``, a
  subclass of the model's class that applies them after building (``auto_map``); load it with
  ``from_pretrained(folder, trust_remote_code=True)``. It needs torch and transformers only.

Removed whole layers are dropped and the rest renumbered (the cache follows, as the fresh
model's layers are numbered anew). A removed half of a layer (its attention or MLP alone) has no
form in a config: :class:`~gdp_graph.prune.hf_config.HfConfigError` says so.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from gdp_graph.graph.analysis import Analysis
from gdp_graph.prune.hf_config import HfConfigError, builds_shapes, pruned_hf_config, rename_key, shapes_of
from gdp_graph.prune.plan import PruningPlan
from gdp_graph.prune.removed_branch import RemovedBranch

__all__ = ["HF_MODELING_FILE", "apply_pruned_shapes", "local_tokenizer", "save_hf", "write_hf_folder"]

HF_MODELING_FILE = "modeling_gdp_pruned.py"
_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
                 "AutoModelForMaskedLM", "AutoModelForImageClassification", "AutoModel")


def apply_pruned_shapes(model: nn.Module, spec: dict) -> None:
    """Give ``model`` (just built from its config) the pruned shapes and module attributes of
    ``spec`` (``{"shapes": {key: shape}, "attributes": {module: {name: int}}}``)."""
    for name, shape in spec.get("shapes", {}).items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        old = getattr(module, leaf)
        new = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(module, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module._buffers[leaf] = new
    for name, attributes in spec.get("attributes", {}).items():
        module = model.get_submodule(name)
        for key, value in attributes.items():
            setattr(module, key, value)


_MODELING = '''"""Written by gdp-graph: {base} with per-layer pruned sizes (config.gdp_pruned).
Needs torch and transformers only."""

import torch
from torch import nn
from {module} import {base} as _Base


{apply}

class GdpPruned{base}(_Base):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_pruned_shapes(self, getattr(config, "gdp_pruned", None) or {{}})
'''


def _pruned_state(model: nn.Module, renames: dict[str, Optional[str]]) -> dict[str, torch.Tensor]:
    """The state dict under the new keys; removed layers' keys dropped. Raises where a removed
    branch remains inside a kept layer or adds a constant."""
    for name, m in model.named_modules():
        if not isinstance(m, RemovedBranch):
            continue
        if rename_key(name + ".", renames) is not None:
            raise HfConfigError(f"{name} ({m.replaces}) is a removed half of a layer that stays: a Hugging Face "
                                f"config cannot say that; remove whole layers, or save the model whole (torch.save)")
        if m.constant is not None and bool(m.constant.ne(0).any()):
            raise HfConfigError(f"the removed branch {name} adds a constant (a bias) that a config cannot keep")
    state = {}
    for key, value in model.state_dict().items():
        new = rename_key(key, renames)
        if new is not None:
            state[new] = value
    return state


def _changed_attributes(pruned: nn.Module, original: nn.Module, built: nn.Module, renumbered: nn.Module,
                        renames: dict[str, Optional[str]]) -> dict[str, dict[str, float]]:
    """Number attributes (head counts, widths, scales) where the pruned model differs from the
    one ``built`` from the pruned config, except those that only follow the layers' new numbers
    (``layer_idx``: where the original differs from ``renumbered``, built from the original
    config with the pruned layer count, and the pruning left the value alone)."""
    built_modules, renumbered_modules = dict(built.named_modules()), dict(renumbered.named_modules())
    originals = dict(original.named_modules())
    found: dict[str, dict[str, float]] = {}
    for name, m in pruned.named_modules():
        new_name = rename_key(name + ".", renames) if name else ""
        if new_name is None or name not in originals:
            continue
        new_name = new_name.rstrip(".")
        target, moved = built_modules.get(new_name), renumbered_modules.get(new_name)
        for key, value in vars(m).items():
            if key.startswith("_") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            before = getattr(originals[name], key, None)
            if value == before and getattr(moved, key, None) != before:
                continue  # a layer number
            if getattr(target, key, None) != value:
                found.setdefault(new_name, {})[key] = value
    return found


def _auto_map(cls: type) -> dict[str, str]:
    import transformers

    names = {}
    for auto in _AUTO_CLASSES:
        mapping = getattr(getattr(transformers, auto, None), "_model_mapping", None)
        try:
            if mapping is not None and cls in mapping.values():
                names[auto] = f"{HF_MODELING_FILE[:-3]}.GdpPruned{cls.__name__}"
        except Exception:  # noqa: BLE001 - a lazy mapping that cannot import some model: skip it
            continue
    return names or {"AutoModel": f"{HF_MODELING_FILE[:-3]}.GdpPruned{cls.__name__}"}


def _depth_only(config: Any, new_config: Any) -> Any:
    """The original config with only the layer count (and layer types) of the pruned one."""
    depth = copy.deepcopy(config)
    depth.num_hidden_layers = new_config.num_hidden_layers
    if isinstance(getattr(new_config, "layer_types", None), list):
        depth.layer_types = list(new_config.layer_types)
    return depth


def _build(cls: type, config: Any) -> nn.Module:
    with torch.device("meta"):
        return cls(copy.deepcopy(config))


def _saves(config: Any) -> bool:
    """Whether transformers accepts ``config`` for saving (its own checks, e.g. Llama's hidden
    size a multiple of the heads)."""
    validate = getattr(config, "validate", None)
    try:
        if callable(validate):
            validate()
    except Exception:  # noqa: BLE001 - any refusal means the plain form cannot be written
        return False
    return True


def save_hf(model: nn.Module, analysis: Analysis, plan: PruningPlan, folder: str | Path,
            tokenizer: Any = None) -> bool:
    """Write ``folder`` (see the module docstring) from ``model``, the pruned model of the
    user's class (a ``PreTrainedModel``) that ``plan`` gave on ``analysis``; and the tokenizer
    when given. Returns True when the folder is uniform (plain ``from_pretrained``), False when
    it needs ``trust_remote_code=True``.

    Raises:
        HfConfigError: the model has no config, or the plan has no form in one (see above).
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        raise HfConfigError(f"{type(model).__name__} is not a Hugging Face PreTrainedModel (no config)")
    # the original config: the kept class's own may already hold the pruned widths (keep_class
    # updates a uniform plan's), which pruned_hf_config would scale a second time
    original = getattr(analysis.traced.module, "config", None) or config
    new_config, renames = pruned_hf_config(original, analysis, plan)
    state = _pruned_state(model, renames)
    cls = type(model)
    refused = not _saves(new_config)
    if refused:  # e.g. a hidden size that is no multiple of the heads: the config keeps the original
        original = getattr(analysis.traced.module, "config", config)  # width and the pruned shapes go in gdp_pruned
        new_config.hidden_size = original.hidden_size
    uniform = not refused and not hasattr(new_config, "gdp_layers") and builds_shapes(cls, new_config,
                                                                                    shapes_of_state(state))
    if not uniform:
        built = _build(cls, new_config)
        base = shapes_of(built)
        if set(base) != set(state):
            raise HfConfigError(f"the pruned parameters do not match {cls.__name__}'s: missing "
                                f"{sorted(set(base) - set(state))[:3]}, extra {sorted(set(state) - set(base))[:3]}")
        new_config.gdp_pruned = {
            "shapes": {k: list(v.shape) for k, v in state.items() if tuple(v.shape) != base[k]},
            "attributes": _changed_attributes(model, analysis.traced.module, built,
                                              _build(cls, _depth_only(config, new_config)), renames)}
        new_config.auto_map = _auto_map(cls)
    target = _build(cls, new_config)
    if not uniform:
        apply_pruned_shapes(target, new_config.gdp_pruned)
    loaded = target.load_state_dict(state, strict=False, assign=True)
    if loaded.missing_keys or loaded.unexpected_keys:
        raise HfConfigError(f"the pruned state does not fit {cls.__name__} built from the pruned config: missing "
                            f"{loaded.missing_keys[:3]}, unexpected {loaded.unexpected_keys[:3]}")
    if getattr(model, "generation_config", None) is not None:
        target.generation_config = copy.deepcopy(model.generation_config)
    folder = Path(folder)
    target.save_pretrained(folder)
    if not uniform:
        source = _MODELING.format(base=cls.__name__, module=cls.__module__,
                                  apply=inspect.getsource(apply_pruned_shapes))
        (folder / HF_MODELING_FILE).write_text(source)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return uniform


def shapes_of_state(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def local_tokenizer(model: nn.Module) -> Any:
    """The tokenizer stored where the model came from (``name_or_path``, local files only; a
    folder whose only weights are one GGUF file gives that file's tokenizer), or None."""
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not path:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # noqa: BLE001 - no tokenizer files there: a GGUF file may hold one
        pass
    gguf = sorted(Path(path).glob("*.gguf")) if Path(path).is_dir() else []
    if len(gguf) != 1:
        return None
    try:
        return AutoTokenizer.from_pretrained(path, gguf_file=gguf[0].name, local_files_only=True)
    except Exception:  # noqa: BLE001 - none that loads offline: the folder goes without
        return None


def write_hf_folder(folder: str | Path, model: nn.Module, analysis: Analysis, plan: PruningPlan,
                    tokenizer: Any = None) -> dict[str, Any]:
    """``gdp-graph prune --out DIR``'s ``DIR/hf``: :func:`save_hf` for a Hugging Face model of its
    own class, with ``tokenizer`` or the one at its ``name_or_path``. Returns what the report
    says: ``{"folder", "uniform", "tokenizer", "load"}``, or ``{"skipped": why}``."""
    if not hasattr(model, "save_pretrained") or getattr(model, "config", None) is None:
        return {"skipped": f"{type(model).__name__} is not a Hugging Face PreTrainedModel"}
    tokenizer = tokenizer if tokenizer is not None else local_tokenizer(model)
    try:
        uniform = save_hf(model, analysis, plan, folder, tokenizer)
    except HfConfigError as exc:
        return {"skipped": str(exc)}
    load = "from_pretrained(folder)" if uniform else "from_pretrained(folder, trust_remote_code=True)"
    return {"folder": str(folder), "uniform": uniform, "tokenizer": tokenizer is not None, "load": load}
