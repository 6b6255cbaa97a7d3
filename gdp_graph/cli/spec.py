"""Load a model from a SPEC: ``package.module:factory``, ``path/to/file.py:factory`` or
``hf:DIR`` / ``hf:owner/name``.

The factory takes no arguments and returns a model, or a ``(model, example_inputs)`` pair; the
example inputs are a tensor, a tuple of positional inputs or a dict of keyword inputs.

``hf:`` names a Hugging Face folder (``config.json`` plus weights), or a hub name already in the
local Hugging Face cache (nothing is ever downloaded). It loads ``AutoModelForCausalLM`` in the
stored dtype, with token ids as example inputs: a short text through the folder's tokenizer, or
seeded random ids where the folder has none (``--input-shape BATCH,SEQ`` sets their shape). With
``meta=True`` (``--meta``) the model is built from ``config.json`` alone on the meta device: shapes,
no weights, for analysis and plans of checkpoints that do not fit in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from gdp_graph.recipes.factory import FactoryError, import_factory


class SpecError(FactoryError):
    """The SPEC cannot be resolved to a model (the message says which part is wrong)."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``."""
    try:
        shape = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise SpecError(f"--input-shape {text!r}: expected comma-separated integers like 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise SpecError(f"--input-shape {text!r}: every size must be a positive integer")
    return shape


HF_PREFIX = "hf:"
#: the text whose tokens are the example inputs of an ``hf:`` model with a tokenizer
EXAMPLE_TEXT = "Structured pruning removes whole channels, attention heads and layers from a model."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def is_hf_spec(spec: str) -> bool:
    return spec.startswith(HF_PREFIX)


def hf_folder(spec: str) -> Path:
    """The local folder of ``hf:DIR`` or ``hf:owner/name`` (a snapshot in the local cache)."""
    name = spec[len(HF_PREFIX):]
    if not name:
        raise SpecError(f"SPEC {spec!r}: expected hf:DIR or hf:owner/name")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpecError(f"SPEC {spec!r}: {path} has no config.json (not a Hugging Face model folder)")
        return path
    if path.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise SpecError(f"SPEC {spec!r}: no folder {path}")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - not cached (or not a valid name): say so, never download
        raise SpecError(f"SPEC {spec!r}: no folder {path}, and {name} is not in the local Hugging Face cache "
                        f"(gdp-graph never downloads; {type(exc).__name__})") from None


def _hf_inputs(folder: Path, config: Any, input_shape: Optional[str], device: str) -> dict[str, Any]:
    """Token ids as a causal LM takes them (``use_cache=False``: no cache object in the graph)."""
    if input_shape is None and any((folder / f).is_file() for f in TOKENIZER_FILES):
        from transformers import AutoTokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            ids = tokenizer(EXAMPLE_TEXT, return_tensors="pt")["input_ids"]
        except Exception as exc:  # noqa: BLE001 - a broken tokenizer is the folder's fault
            raise SpecError(f"SPEC hf:{folder}: the tokenizer does not load: {type(exc).__name__}: {exc}") from exc
        return {"input_ids": ids.to(device), "use_cache": False}
    shape = parse_shape(input_shape) if input_shape is not None else (1, 16)
    if len(shape) != 2:
        raise SpecError(f"--input-shape {input_shape}: an hf: model takes token ids shaped BATCH,SEQ")
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab <= 0:
        raise SpecError(f"SPEC hf:{folder}: config.json gives no vocab_size to draw example token ids from")
    ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids.to(device), "use_cache": False}


def load_hf(spec: str, input_shape: Optional[str] = None, *, meta: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """``AutoModelForCausalLM`` of an ``hf:`` SPEC and its example inputs (see the module docstring)."""
    try:
        import transformers as T
    except ImportError:
        raise SpecError(f"SPEC {spec!r}: hf: models need transformers: pip install 'gdp-graph[hf]'") from None
    folder = hf_folder(spec)
    try:
        config = T.AutoConfig.from_pretrained(folder, local_files_only=True)
        if meta:
            with torch.device("meta"):
                model = T.AutoModelForCausalLM.from_config(config, dtype=getattr(config, "dtype", None))
        else:
            model = T.AutoModelForCausalLM.from_pretrained(folder, dtype="auto", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers' own message names what is wrong
        text = str(exc).strip().splitlines()
        raise SpecError(f"SPEC {spec!r}: transformers cannot load {folder}: {type(exc).__name__}: "
                        f"{text[0] if text else ''}") from exc
    return model.eval(), _hf_inputs(folder, config, input_shape, "meta" if meta else "cpu")


def load_spec(spec: str, input_shape: Optional[str] = None, *, require_inputs: bool = True,
              meta: bool = False) -> tuple[nn.Module, Optional[Any]]:
    """Build the model and its example inputs (``input_shape`` overrides the factory's; with
    ``require_inputs=False`` they may be None, for callers that take them from data). ``meta``:
    an ``hf:`` model from its config alone, on the meta device."""
    if is_hf_spec(spec):
        return load_hf(spec, input_shape, meta=meta)
    if meta:
        raise SpecError(f"SPEC {spec!r}: --meta builds a model from config.json: it needs an hf:DIR SPEC")
    factory = import_factory(spec)
    try:
        made = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory raised
        raise SpecError(f"SPEC {spec!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    inputs: Optional[tuple] = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        model, given = made
        # a dict is keyword inputs (model(**inputs)), kept as is for analyze; so is a tokenizer's
        # BatchEncoding (a Mapping, not a dict), as a plain dict
        inputs = (given,) if isinstance(given, torch.Tensor) else dict(given) if isinstance(given, Mapping) \
            else tuple(given)
    else:
        model = made
    if not isinstance(model, nn.Module):
        raise SpecError(f"SPEC {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    if input_shape is not None:
        generator = torch.Generator().manual_seed(0)
        inputs = (torch.randn(parse_shape(input_shape), generator=generator),)
    if inputs is None and require_inputs:
        raise SpecError(f"SPEC {spec!r}: the factory returned no example inputs; pass --input-shape")
    return model, inputs


def add_meta_argument(p: Any) -> None:
    """``--meta`` for the commands that can work from shapes alone."""
    p.add_argument("--meta", action="store_true",
                   help="hf: SPECs only: build the model from config.json alone on the meta device (no weights "
                        "loaded: analysis and plans of checkpoints too large for memory)")
