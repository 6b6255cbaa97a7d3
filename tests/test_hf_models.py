"""Hugging Face transformers 5 models on tiny configs (random init, no downloads): analysed
through the torch.export front end, heads / MLP channels / layers pruned, verified, and the
pruned model still returns the model's own output class."""

from __future__ import annotations

import warnings

import pytest
import torch

import gdp_graph as G
from gdp_graph.graph.cost import count_params

T = pytest.importorskip("transformers")
# torch's own pytree specs warn when an exported module is deep-copied (torch 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def _ids(vocab: int = 64, shape=(2, 7)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))


def llama():
    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return T.LlamaForCausalLM(cfg), {"input_ids": _ids(), "use_cache": False}


def gpt2():
    cfg = T.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                       bos_token_id=0, eos_token_id=0)
    return T.GPT2LMHeadModel(cfg), {"input_ids": _ids(), "use_cache": False}


def bert():
    cfg = T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, max_position_embeddings=32, num_labels=3)
    return T.BertForSequenceClassification(cfg), {"input_ids": _ids(), "attention_mask": torch.ones(2, 7, dtype=torch.long)}


def vit():
    cfg = T.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, num_labels=5)
    return T.ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))}


MODELS = {"llama": llama, "gpt2": gpt2, "bert": bert, "vit": vit}
#: (heads per layer as units, MLP width) of each tiny config; Llama's head unit is a key/value
#: head with its query heads (GQA: 4 query heads over 2 key/value heads)
EXPECTED = {"llama": (2, 48), "gpt2": (4, 128), "bert": (4, 48), "vit": (4, 48)}


def analysis_cache():
    """``get(name) -> (model, inputs, analysis)`` for the tiny models, each analyzed once."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model, inputs = MODELS[name]()
            model.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[name] = (model, inputs, G.analyze(model, inputs))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def analyses():
    return analysis_cache()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_mlp_and_layers_are_found(analyses, name):
    model, _, a = analyses(name)
    assert a.traced.front_end == "export" and "torch.fx" in a.traced.front_end_reason
    heads, width = EXPECTED[name]
    head_groups = [g for g in a.groups if g.unit == "head"]
    assert len(head_groups) == 2 and all(g.size == heads and g.prunable and g.exact for g in head_groups)
    mlp = [g for g in a.groups if g.size == width and g.prunable and g.exact and g.unit == "channel"]
    assert len(mlp) == 2, [(g.id, g.size, g.modules) for g in a.groups]
    # attention and MLP halves of both layers, the first attention too (rotary tables and masks
    # it shares with later layers stay outside the block)
    assert len(a.blocks) == 4 and all(not b.frozen_reasons for b in a.blocks)
    # the residual stream goes through LayerNorm / RMSNorm: found, but inexact unless allowed
    stream = max(a.groups, key=lambda g: len(g.modules))
    assert "residual" in stream.couplings and not stream.exact


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_random_head_mlp_block_plans_are_exact(analyses, name, seed):
    model, inputs, a = analyses(name)
    plan = G.random_plan(a, 0.5, seed=seed, block_ratio=0.5)
    assert plan.removed_blocks and any(a.groups[g].unit == "head" for g in plan.keep)
    pruned = G.rewrite(a, plan, keep_class=False)  # the GraphModule: its batch size is symbolic
    result = G.verify(a, plan, pruned)
    assert result.ok and result.max_rel_diff < 1e-5, result
    assert count_params(pruned) < count_params(model)
    with torch.no_grad():
        out = pruned(*a.traced.example_inputs)
        # batch and sequence sizes stay symbolic in the exported graph: a bigger batch runs
        bigger = pruned(*(torch.cat([t, t]) if isinstance(t, torch.Tensor) else t for t in a.traced.example_inputs))
    assert type(out) is type(model(**inputs))  # CausalLMOutputWithPast, SequenceClassifierOutput, ...
    assert torch.equal(bigger[0][:2], out[0]) or torch.allclose(bigger[0][:2], out[0], atol=1e-6)


def test_llama_gqa_head_unit_removes_query_and_key_value_rows_together(analyses):
    model, _, a = analyses("llama")
    g = next(g for g in a.groups if g.unit == "head" and "model.layers.0.self_attn.q_proj" in g.modules)
    pruned = G.rewrite(a, G.PruningPlan(keep={g.id: (1,)}))
    params = dict(pruned.named_parameters())
    head_dim = 32 // 4
    assert params["model.layers.0.self_attn.q_proj.weight"].shape == (2 * head_dim, 32)  # 2 query heads
    assert params["model.layers.0.self_attn.k_proj.weight"].shape == (head_dim, 32)  # their kv head
    assert params["model.layers.0.self_attn.v_proj.weight"].shape == (head_dim, 32)
    assert params["model.layers.0.self_attn.o_proj.weight"].shape == (32, 2 * head_dim)
    # the kept rows are the second key/value head's query heads 2 and 3
    q = model.model.layers[0].self_attn.q_proj.weight.detach()
    assert torch.equal(params["model.layers.0.self_attn.q_proj.weight"], q[2 * head_dim:])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruned_model_keeps_its_class(analyses, name):
    model, inputs, a = analyses(name)
    plan = G.random_plan(a, 0.5, seed=0)  # heads and MLP channels, no blocks
    pruned_applied = G.apply_plan(a, plan, keep_class=True)
    pruned = pruned_applied.model
    assert type(pruned) is type(model) and pruned is not model
    assert pruned_applied.verify.ok and pruned_applied.verify.max_rel_diff < 1e-5, pruned_applied.verify
    assert count_params(pruned) < count_params(model)
    with torch.no_grad():
        out = pruned(**inputs)
    assert type(out) is type(model(**inputs))
    first_linear = next(m for m in pruned.modules() if isinstance(m, torch.nn.Linear))
    assert first_linear.weight.shape == (first_linear.out_features, first_linear.in_features)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_pruned_decoder_generates_the_same_tokens_with_and_without_cache(analyses, name):
    model, inputs, a = analyses(name)
    pruned = G.rewrite(a, G.random_plan(a, 0.5, seed=1), keep_class=True)
    assert type(pruned) is type(model)
    with torch.no_grad():
        cached = pruned.generate(inputs["input_ids"], max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = pruned.generate(inputs["input_ids"], max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape == (2, 12) and torch.equal(cached, uncached)


def test_uniform_llama_round_trips_through_save_pretrained(analyses, tmp_path):
    model, inputs, a = analyses("llama")
    pruned = G.rewrite(a, G.random_plan(a, 0.5, seed=0), keep_class=True)
    assert pruned.config.num_attention_heads == 2 and pruned.config.num_key_value_heads == 1
    assert pruned.config.intermediate_size == 24 and pruned.config.head_dim == 8
    pruned.save_pretrained(tmp_path)
    reloaded = T.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, pruned(**inputs).logits, atol=1e-6)
    assert model.config.num_attention_heads == 4  # the user's model and config are untouched


def test_non_uniform_config_saves_whole(analyses, tmp_path):
    from gdp_graph.prune.export import load, save

    model, inputs, a = analyses("gpt2")  # GPT-2's config derives head_dim from n_head: not expressible
    pruned = G.rewrite(a, G.random_plan(a, 0.5, seed=0), keep_class=True)
    assert pruned.config.n_head == 4
    save(pruned, tmp_path / "pruned.pt")
    reloaded = load(tmp_path / "pruned.pt").eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, pruned(**inputs).logits)


def test_removed_layers_keep_the_class_by_default(analyses):
    model, inputs, a = analyses("bert")  # post-norm: the add sits in BertSelfOutput, after its dense
    plan = G.random_plan(a, 0.3, seed=0, block_ratio=0.5)
    assert plan.removed_blocks
    pruned_applied = G.apply_plan(a, plan)
    pruned = pruned_applied.model
    assert type(pruned) is type(model) and pruned_applied.verify.ok, pruned_applied.kept_class_reason
    assert pruned.config.num_attention_heads == model.config.num_attention_heads  # no config says "no attention"


def test_meta_device_analysis_gives_a_plan_for_the_real_model(analyses):
    model, inputs, real = analyses("llama")
    with torch.device("meta"):
        meta_model = T.LlamaForCausalLM(model.config)
        meta_ids = torch.zeros_like(inputs["input_ids"], device="meta")
    meta = G.analyze(meta_model, {"input_ids": meta_ids, "use_cache": False})
    assert meta.traced.front_end == "export"
    assert [(g.size, g.unit, g.prunable, g.modules) for g in meta.groups] == \
        [(g.size, g.unit, g.prunable, g.modules) for g in real.groups]
    plan = G.random_plan(meta, 0.5, seed=2)
    pruned_applied = G.apply_plan(real, plan, keep_class=True)
    pruned = pruned_applied.model
    assert type(pruned) is type(model) and pruned_applied.verify.ok


def test_shipped_vit_policy_selects_heads_and_mlp_by_the_real_module_types(analyses):
    model, inputs, a = analyses("vit")
    assert {"Linear", "ViTEmbeddings"} <= {t for g in a.groups for t in g.module_types}  # not "Module"
    gated = G.attach(model, policy="vit", example_inputs=inputs, total_steps=10)
    assert len(gated.gate_parameters()) == 4  # 2 head groups + 2 MLP groups
    out = gated(**inputs)
    (out.logits.square().mean() + gated.penalty()).backward()
    assert all(p.grad is not None for p in gated.gate_parameters())


def test_rotary_embedding_is_not_a_residual_coupling(analyses):
    _, _, a = analyses("llama")
    heads = [g for g in a.groups if g.unit == "head"]
    assert heads and all("residual" not in g.couplings for g in heads)
    assert "residual" in max(a.groups, key=lambda g: len(g.modules)).couplings


@pytest.mark.slow  # two exports of the model through the command line
def test_cli_takes_keyword_inputs_and_names_the_front_end(capsys):
    import json

    from gdp_graph.cli.main import main

    assert main(["inspect", "tests.fixtures.hf_models:tiny_llama", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["front_end"]["name"] == "export" and "torch.fx" in data["front_end"]["reason"]
    assert main(["check", "tests.fixtures.hf_models:tiny_llama", "--ratio", "0.5", "--blocks", "0.5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["params_after"] < data["params_before"]


@pytest.mark.slow  # a subprocess importing transformers
def test_keep_class_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "examples/hf_llama_prune.py", "--out", str(tmp_path / "p")], cwd=root,
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LlamaForCausalLM:" in done.stdout and "equal" in done.stdout and "KV cache: True" in done.stdout
    assert (tmp_path / "p" / "config.json").exists()


def test_verify_calls_a_kept_class_with_keyword_inputs(analyses):
    model, inputs, a = analyses("llama")
    plan = G.random_plan(a, 0.5, seed=0)
    pruned = G.rewrite(a, plan, keep_class=True)
    assert type(pruned) is type(model)
    result = G.verify(a, plan, pruned)  # flattened export inputs would land on the wrong parameters
    assert result.ok and result.max_rel_diff < 1e-5


def test_cache_object_asked_for_in_the_output_is_a_clear_error(analyses):
    model, inputs, _ = analyses("llama")
    with pytest.raises(G.TraceError, match="use_cache=False"):
        G.analyze(model, {"input_ids": inputs["input_ids"], "use_cache": True})


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_pruned_graph_of_a_decoder_exported_with_dynamic_tokens_takes_any_length(name):
    model, inputs = MODELS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = G.analyze(model.eval(), inputs, dynamic="tokens")
    plan = G.random_plan(a, 0.5, seed=0)
    pruned = G.rewrite(a, plan, keep_class=False)
    ids = inputs["input_ids"]
    longer = torch.cat([ids, ids.flip(1)], dim=1)
    flat = [longer if t is ids else t for t in a.traced.example_inputs]
    with torch.no_grad():
        out = pruned(*a.traced.example_inputs)[0]
        long_out = pruned(*flat)[0]
    assert long_out.shape[1] == 14 and torch.allclose(long_out[:, :7], out, atol=1e-5)  # causal: the prefix is unchanged
