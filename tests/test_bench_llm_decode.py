"""benchmarks/llm_decode.py on a tiny random Llama (the real run loads SmolLM2): one target pruned
one-shot, saved, reloaded and timed against the original; its record and the tables."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import tiny_lm  # noqa: E402

from benchmarks import llm_decode, records  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def test_one_target_is_saved_timed_profiled_and_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(llm_decode, "ROOT", tmp_path)
    monkeypatch.setitem(sys.modules, "smollm2", types.SimpleNamespace(model=lambda: tiny_lm.llama(),
                                                                      task=tiny_lm.task))
    out = tmp_path / "r.json"
    argv = ["--targets", "0.6", "--rounds", "2", "--prompt", "4", "--new", "3", "--calibration-batches", "2",
            "--policy", "llm", "--out", str(out)]
    assert llm_decode.main(argv) == 0
    [record] = records.load_records(out)
    result = record["result"]
    assert result["same_logits"] and result["params"] < 0.7 * result["params_original"]
    assert result["ideal_speedup"] == pytest.approx(result["params_original"] / result["params"])
    speed = result["speed"]
    for name in ("original", "pruned"):
        for kind in ("decode", "generate"):
            timing = speed[name][kind]
            assert len(timing["rounds_ms_per_token"]) == 2
            assert timing["ms_per_token_min"] <= timing["ms_per_token_median"] <= timing["ms_per_token_max"]
    assert len(speed["decode_speedup"]["rounds"]) == 2 and result["decode_speedup"] > 0
    profile = result["profile"]["pruned"]
    assert set(profile["ms_per_token"]) == {*llm_decode.PARTS, "rest"}
    assert profile["params"]["lm_head"] == 0  # tied: counted with the embedding
    assert sum(profile["params"].values()) == result["params"]
    assert (tmp_path / "runs" / "llm_decode" / "activation-0.6" / "hf" / "config.json").is_file()
    tables = llm_decode.table(out)
    assert "| activation | 0.6 |" in tables and "| pruned |" in tables


def test_a_shipped_policy_is_recorded_by_its_label_and_older_paths_pool_with_it(tmp_path):
    args = argparse.Namespace(
        policy="/some/checkout/policies/llm.yaml", method="activation", calibration_batches=2, prompt=32, new=32,
        rounds=5)
    settings = llm_decode.settings_of(args, 0.5)
    assert settings["policy"] == "policies/llm.yaml"
    out = tmp_path / "r.json"
    profile = {"ms_per_token": dict.fromkeys((*llm_decode.PARTS, "rest"), 1.0),
               "params": dict.fromkeys(llm_decode.PARTS, 1), "total_ms_per_token": 6.0}
    timing = {"ms_per_token_median": 2.0}
    for policy, speedup in (("/old/worktree/policies/llm.yaml", 1.1), ("policies/llm.yaml", 1.3)):
        span = {"median": speedup, "min": speedup, "max": speedup}
        result = {"params": 5, "params_original": 10, "ideal_speedup": 2.0, "decode_share_of_ideal": speedup / 2,
                  "generate_share_of_ideal": speedup / 2, "profile": {"original": profile, "pruned": profile},
                  "speed": {"decode_speedup": span, "generate_speedup": span,
                            "original": {"decode": timing}, "pruned": {"decode": timing}}}
        records.append_record(out, records.new_record(llm_decode.BENCH, {**settings, "policy": policy}, result))
    first_table = llm_decode.table(out).split("\n\n")[0]
    rows = [line for line in first_table.splitlines() if line.startswith("| activation |")]
    assert len(rows) == 1 and "1.30 (1.30-1.30)" in rows[0]  # the later record replaces the older path's


def test_decoding_uses_the_cache_argument_of_this_transformers_without_deprecation_warnings():
    import warnings

    import torch
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(config).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert llm_decode.decode_seconds(model, torch.randint(0, 64, (1, 4)), 3) > 0
    assert not [str(w.message) for w in caught if "past_key_values" in str(w.message)]
