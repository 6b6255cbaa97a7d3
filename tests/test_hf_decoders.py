"""Hugging Face decoders called as people call them: ``input_ids`` alone or a tokenizer's
``BatchEncoding``, no ``use_cache=False`` (tiny random configs, no downloads). The KV cache that
the forward returns by default is left out of the trace (``inputs.STATE_FLAGS``); the pruned
model keeps its class, matches the gated reference and generates the same tokens with and
without its cache."""

from __future__ import annotations

import warnings

import pytest
import torch

import gdp_graph as G

T = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


def decoder(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                              bos_token_id=0, eos_token_id=0)).eval()
    config, cls = {"llama": (T.LlamaConfig, T.LlamaForCausalLM), "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
                   "mistral": (T.MistralConfig, T.MistralForCausalLM), "phi3": (T.Phi3Config, T.Phi3ForCausalLM)}[name]
    extra = {"pad_token_id": 0} if name == "phi3" else {}
    return cls(config(**COMMON, **extra)).eval()


def ids(shape=(2, 7)) -> torch.Tensor:
    return torch.randint(1, 64, shape, generator=torch.Generator().manual_seed(0))


DECODERS = ["llama", "qwen2", "mistral", "phi3", "gpt2"]


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_with_input_ids_alone_prunes_exactly_and_generates(name):
    model = decoder(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = G.analyze(model, {"input_ids": ids()})
        plan = G.random_plan(a, 0.5, seed=0)
        pruned_applied = G.apply_plan(a, plan)
        pruned = pruned_applied.model
    assert any(a.groups[g].unit == "head" for g in plan.keep)
    assert type(pruned) is type(model) and pruned_applied.verify.ok and pruned_applied.verify.max_rel_diff < 1e-5
    with torch.no_grad():
        out = pruned(ids())  # called as the user calls it: the cache is back
        cached = pruned.generate(ids(), max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = pruned.generate(ids(), max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=0)
    assert out.past_key_values is not None
    assert cached.shape == (2, 12) and torch.equal(cached, uncached)


def test_positional_input_ids_and_a_batch_encoding_work_as_they_are():
    model = decoder("llama")
    encoding = T.BatchEncoding({"input_ids": ids(), "attention_mask": torch.ones(2, 7, dtype=torch.long)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_dict = G.analyze(model, encoding)
        positional = G.analyze(model, ids())
    assert by_dict.traced.inputs.kwargs["use_cache"] is False
    assert [g.size for g in by_dict.groups] == [g.size for g in positional.groups]
    assert sum(g.prunable and g.exact for g in positional.groups) == 4  # 2 head + 2 MLP groups


def test_a_state_flag_given_by_the_user_is_kept():
    model = decoder("llama")
    with pytest.raises(G.TraceError, match="not tensors"):
        G.analyze(model, {"input_ids": ids(), "use_cache": True})


def test_the_command_line_takes_a_factory_returning_a_batch_encoding():
    import json

    from gdp_graph.cli.main import main

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["check", "tests/fixtures/hf_models.py:tiny_llama_tokenized", "--ratio", "0.5", "--json"])
    data = json.loads(out.getvalue())
    assert code == 0 and data["ok"] is True and data["params_after"] < data["params_before"]
