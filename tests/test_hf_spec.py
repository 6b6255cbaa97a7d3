"""``hf:DIR`` SPECs: a Hugging Face folder (or a hub name in the local cache) loaded as
``AutoModelForCausalLM`` with token ids made for it; ``--meta`` from config.json alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdp_graph.cli.spec import EXAMPLE_TEXT, SpecError, load_spec
from tests.fixtures.hf_folders import write_llama

T = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
ROOT = Path(__file__).resolve().parents[1]


def gdp_graph(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdp_graph.cli.main", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_llama(tmp_path_factory.mktemp("hf") / "tiny", dtype=torch.bfloat16)


def test_a_folder_loads_in_its_dtype_with_its_tokenizer(folder):
    model, inputs = load_spec(f"hf:{folder}")
    assert isinstance(model, T.LlamaForCausalLM) and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    expected = T.AutoTokenizer.from_pretrained(folder)(EXAMPLE_TEXT, return_tensors="pt")["input_ids"]
    assert torch.equal(inputs["input_ids"], expected) and inputs["use_cache"] is False
    assert int(expected.max()) > 0  # the words are in the tokenizer's vocabulary, not all unknown


def test_without_a_tokenizer_the_ids_are_random_and_shaped_by_input_shape(tmp_path):
    bare = write_llama(tmp_path / "bare", tokenizer=False)
    _, inputs = load_spec(f"hf:{bare}", "3,5")
    ids = inputs["input_ids"]
    assert ids.shape == (3, 5) and ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < 64
    with pytest.raises(SpecError, match="BATCH,SEQ"):
        load_spec(f"hf:{bare}", "1,3,8")


def test_meta_builds_the_same_shapes_without_weights(folder):
    model, inputs = load_spec(f"hf:{folder}", meta=True)
    real, _ = load_spec(f"hf:{folder}")
    assert all(p.is_meta for p in model.parameters()) and inputs["input_ids"].is_meta
    assert {n: (p.shape, p.dtype) for n, p in model.named_parameters()} == \
        {n: (p.shape, p.dtype) for n, p in real.named_parameters()}


def test_a_hub_name_is_read_from_the_local_cache_only(folder, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model, _ = load_spec("hf:someone/tiny")
    assert isinstance(model, T.LlamaForCausalLM)
    with pytest.raises(SpecError, match="not in the local Hugging Face cache .*never downloads"):
        load_spec("hf:someone/other")


def test_inspect_explain_check_and_apply_take_hf_folders(folder, tmp_path):
    done = gdp_graph("inspect", f"hf:{folder}", "--json")
    assert done.returncode == 0, done.stderr
    real = json.loads(done.stdout)
    done = gdp_graph("inspect", f"hf:{folder}", "--meta", "--json")
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)
    assert [(g["size"], g["members"], g["prunable"]) for g in meta["groups"]] == \
        [(g["size"], g["members"], g["prunable"]) for g in real["groups"]]
    assert meta["params"] == real["params"]
    mlp = next(g["group"] for g in real["groups"] if g["size"] == 48)
    done = gdp_graph("explain", f"hf:{folder}", str(mlp), "--meta", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["prunable"], done.stderr
    plan = tmp_path / "plan.json"
    done = gdp_graph("check", f"hf:{folder}", "--meta", "--save-plan", str(plan), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["verified"] is False, done.stderr
    done = gdp_graph("apply", f"hf:{folder}", str(plan), "--json")  # the real weights: verified in float32
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert report["ok"] and report["params_after"] < report["params_before"]
    done = gdp_graph("check", f"hf:{folder}", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["ok"], done.stderr


@pytest.mark.parametrize("spec, message", [
    ("hf:{tmp}/missing", "no folder"),
    ("hf:{tmp}", "has no config.json"),
    ("hf:", "expected hf:DIR"),
    ("hf:nobody/nothing", "not in the local Hugging Face cache"),
])
def test_bad_hf_specs_are_one_line_exit_2(tmp_path, spec, message):
    done = gdp_graph("inspect", spec.format(tmp=tmp_path), env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_meta_needs_an_hf_spec():
    done = gdp_graph("inspect", "tests.zoo.resnets:resnet_basic", "--meta")
    assert done.returncode == 2 and "--meta" in done.stderr and done.stderr.count("\n") == 1


def test_a_folder_whose_weights_do_not_load_is_one_line_exit_2(tmp_path):
    broken = write_llama(tmp_path / "broken", tokenizer=False)
    shard = sorted(broken.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    done = gdp_graph("inspect", f"hf:{broken}")
    assert done.returncode == 2 and "transformers cannot load" in done.stderr and done.stderr.count("\n") == 1, \
        done.stderr


def test_on_the_meta_device_bias_free_blocks_are_removable_and_biased_ones_say_why(folder, tmp_path):
    import warnings

    import gdp_graph as G
    gpt2 = tmp_path / "gpt2"
    T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)).save_pretrained(gpt2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llama = G.analyze(*load_spec(f"hf:{folder}", meta=True))
        biased = G.analyze(*load_spec(f"hf:{gpt2}", "1,8", meta=True))
    assert len(llama.blocks) == 4 and all(b.prunable and not b.frozen_reasons for b in llama.blocks)
    assert biased.blocks and all(not b.prunable for b in biased.blocks)
    assert all("on the meta device the branch's constant on zero input needs the weights" in r
               for b in biased.blocks for r in b.frozen_reasons)
