"""The pruned config (``prune.hf_config``) and the ``save_pretrained`` folder (``prune.hf_save``)
of tiny random decoders: the folder loads in a fresh interpreter WITHOUT gdp_graph, gives the
pruned model's logits and generates the same tokens with and without the KV cache; removed
layers are dropped and renumbered; layers that keep different widths load through the folder's
own modeling code (``trust_remote_code``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import gdp_graph as G
from gdp_graph.prune.hf_config import HfConfigError, pruned_hf_config, rename_key
from gdp_graph.prune.hf_save import save_hf

T = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def llama(layers: int = 3):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return T.LlamaForCausalLM(cfg).eval()


def gpt2():
    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                          bos_token_id=0, eos_token_id=0)).eval()


IDS = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(0))


def analyzed(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return G.analyze(model, {"input_ids": IDS})


def groups(a, unit, size=None):
    return [g for g in a.groups if g.unit == unit and g.prunable and g.exact and (size is None or g.size == size)]


def layer_blocks(a, prefix):
    return frozenset(b.id for b in a.blocks if b.name == prefix)


def prune(a, plan):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned_applied = G.apply_plan(a, plan)
        pruned = pruned_applied.model
    assert pruned_applied.verify.ok, pruned_applied.kept_class_reason
    return pruned


LOAD = textwrap.dedent("""
    import json, sys, torch, transformers
    folder, remote = sys.argv[1], sys.argv[2] == "1"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
    ids = torch.load(folder + "/../ids.pt")
    with torch.no_grad():
        logits = model(ids).logits
        kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
        cached = model.generate(ids, use_cache=True, **kw)
        uncached = model.generate(ids, use_cache=False, **kw)
    torch.save(logits, folder + "/../logits.pt")
    print(json.dumps({"gdp": "gdp_graph" in sys.modules, "same": bool(torch.equal(cached, uncached)),
                      "layers": model.config.num_hidden_layers, "class": type(model).__name__}))
""")


def load_elsewhere(folder, remote=False):
    """Load the folder in a fresh interpreter that never imports gdp_graph."""
    torch.save(IDS, folder.parent / "ids.pt")
    done = subprocess.run([sys.executable, "-c", LOAD, str(folder), "1" if remote else "0"], capture_output=True,
                          text=True, timeout=300, cwd=str(folder.parent), env={"OMP_NUM_THREADS": "1", "PATH": "",
                                                                                "HF_HUB_OFFLINE": "1",
                                                                                "HF_HOME": str(folder.parent / "hf")})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), torch.load(folder.parent / "logits.pt")


def test_uniform_widths_and_a_removed_layer_give_a_plain_folder(tmp_path):
    model = llama()
    a = analyzed(model)
    keep = {g.id: (1,) for g in groups(a, "head")} | {g.id: tuple(range(0, 48, 2)) for g in groups(a, "channel", 48)}
    plan = G.PruningPlan(keep=keep, removed_blocks=layer_blocks(a, "model.layers.1"))
    config, renames = pruned_hf_config(model.config, a, plan)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (2, 2, 1)
    assert config.intermediate_size == 24 and config.head_dim == 8
    assert renames == {"model.layers.1.": None, "model.layers.2.": "model.layers.1."}
    assert rename_key("model.layers.2.mlp.up_proj.weight", renames) == "model.layers.1.mlp.up_proj.weight"
    assert model.config.num_hidden_layers == 3 and not hasattr(config, "gdp_layers")  # the user's config untouched
    pruned = prune(a, plan)
    assert save_hf(pruned, a, plan, tmp_path / "hf") is True
    assert not (tmp_path / "hf" / "modeling_gdp_pruned.py").exists()
    info, logits = load_elsewhere(tmp_path / "hf")
    assert info == {"gdp": False, "same": True, "layers": 2, "class": "LlamaForCausalLM"}
    with torch.no_grad():
        assert torch.allclose(logits, pruned(IDS).logits, atol=1e-5)


def test_layer_types_follow_the_kept_layers():
    torch.manual_seed(0)
    model = T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                             max_window_layers=1, sliding_window=4)).eval()
    a = analyzed(model)
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    config, renames = pruned_hf_config(model.config, a, G.PruningPlan(removed_blocks=layer_blocks(a, "model.layers.0")))
    assert config.num_hidden_layers == 2 and config.layer_types == ["sliding_attention", "sliding_attention"]
    assert renames == {"model.layers.0.": None, "model.layers.1.": "model.layers.0.", "model.layers.2.": "model.layers.1."}


def test_layers_of_different_widths_load_through_the_folder_code(tmp_path):
    model = llama()
    a = analyzed(model)
    heads, mlps = groups(a, "head"), groups(a, "channel", 48)
    keep = {heads[0].id: (0,), mlps[1].id: tuple(range(16)), mlps[2].id: tuple(range(40))}
    plan = G.PruningPlan(keep=keep, removed_blocks=layer_blocks(a, "model.layers.1"))  # and layer 2 becomes 1
    config, renames = pruned_hf_config(model.config, a, plan)
    assert config.num_hidden_layers == 2 and config.num_attention_heads == 4 and config.intermediate_size == 48
    assert [d["num_attention_heads"] for d in config.gdp_layers] == [2, 4]
    assert [d["mlp"] for d in config.gdp_layers] == [48, 40]
    pruned = prune(a, plan)
    assert save_hf(pruned, a, plan, tmp_path / "hf") is False
    info, logits = load_elsewhere(tmp_path / "hf", remote=True)
    assert info["gdp"] is False and info["same"] and info["class"] == "GdpPrunedLlamaForCausalLM"
    with torch.no_grad():
        assert torch.allclose(logits, pruned(IDS).logits, atol=1e-5)


def test_a_class_that_derives_head_dim_gets_the_folder_code(tmp_path):
    model = gpt2()  # head_dim = n_embd / n_head: no plain GPT-2 config has 2 heads of 8
    a = analyzed(model)
    plan = G.PruningPlan(keep={g.id: (0, 3) for g in groups(a, "head")})
    pruned = prune(a, plan)
    assert save_hf(pruned, a, plan, tmp_path / "hf") is False
    info, logits = load_elsewhere(tmp_path / "hf", remote=True)
    assert info["same"] and info["gdp"] is False
    with torch.no_grad():
        assert torch.allclose(logits, pruned(IDS).logits, atol=1e-5)


def test_a_removed_half_layer_has_no_config():
    model = llama(2)
    a = analyzed(model)
    attention = min(b.id for b in a.blocks if b.name == "model.layers.0")
    plan = G.PruningPlan(removed_blocks=frozenset({attention}))
    pruned = prune(a, plan)
    with pytest.raises(HfConfigError, match="half of a layer"):
        save_hf(pruned, a, plan, "unused")
