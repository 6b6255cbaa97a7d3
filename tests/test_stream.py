"""``gdp-graph apply hf:DIR PLAN --out OUT``: the checkpoint sliced tensor by tensor equals the
in-memory rewrite, loads with plain transformers, keeps its dtype and files; bad input is one
line, exit 2, with nothing written."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch

import gdp_graph as G
from gdp_graph.cli.main import main
from gdp_graph.cli.spec import load_hf
from tests.fixtures.hf_folders import write_llama

T = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
# the slice map (issue 16) lands separately: until then there is nothing to stream with
pytest.importorskip("gdp_graph.prune.slices")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def meta_plan(folder: Path, path: Path, seed: int = 0, ratio: float = 0.4, layers: tuple[str, ...] = ()) -> Path:
    """A random plan made on the meta device (no weights), saved; ``layers``: remove every block
    of these layers too (``model.layers.1``)."""
    model, inputs = load_hf(f"hf:{folder}", meta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = G.analyze(model, inputs)
    plan = G.random_plan(analysis, ratio, seed=seed)
    blocks = frozenset(b.id for b in analysis.blocks if b.name in layers)
    assert len(blocks) == 2 * len(layers) and all(analysis.blocks[b].prunable for b in blocks)  # no weights needed
    G.PruningPlan(plan.keep, blocks).save(path, analysis)
    return path


def in_memory(folder: Path, plan_file: Path, out: Path):
    """The in-memory path: load, analyse, rewrite (the model's class), save_pretrained (hf_save)."""
    from gdp_graph.prune.hf_save import save_hf
    model, inputs = load_hf(f"hf:{folder}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = G.analyze(model, inputs)
        pruned_applied = G.apply_plan(analysis, G.PruningPlan.load(plan_file))
        pruned = pruned_applied.model
    assert type(pruned) is T.LlamaForCausalLM and pruned_applied.verify.ok, pruned_applied.kept_class_reason
    assert save_hf(pruned, analysis, G.PruningPlan.load(plan_file), out)  # uniform: a plain folder
    return model, inputs, pruned


def same_tensors(a: Path, b: Path) -> None:
    from safetensors.torch import load_file
    left = {k: v for p in sorted(a.glob("*.safetensors")) for k, v in load_file(p).items()}
    right = {k: v for p in sorted(b.glob("*.safetensors")) for k, v in load_file(p).items()}
    assert left.keys() == right.keys()
    assert all(left[k].dtype == right[k].dtype and torch.equal(left[k], right[k]) for k in left)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the fixtures printed (save_pretrained's progress bars)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_llama(tmp_path_factory.mktemp("src") / "llama", dtype=torch.bfloat16, hidden_size=64,
                       intermediate_size=96, shard_size="60KB")


@pytest.fixture(scope="module")
def streamed(source, tmp_path_factory):
    work = tmp_path_factory.mktemp("stream")
    plan = meta_plan(source, work / "plan.json")
    before = digest(source)
    code = main(["apply", f"hf:{source}", str(plan), "--out", str(work / "out"), "--max-shard-size", "40KB", "--json"])
    assert code == 0
    assert digest(source) == before  # the source is only read
    return plan, work / "out"


def test_streamed_checkpoint_equals_the_in_memory_rewrite(source, streamed, tmp_path):
    plan_file, out = streamed
    model, inputs, pruned = in_memory(source, plan_file, tmp_path / "in_memory")
    same_tensors(out, tmp_path / "in_memory")
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == \
        json.loads((tmp_path / "in_memory" / "config.json").read_text())["intermediate_size"]
    loaded, info = T.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    expected, actual = pruned.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(actual[k].dtype == torch.bfloat16 and torch.equal(actual[k], expected[k]) for k in expected)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, pruned(**inputs).logits)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())


def test_streamed_folder_has_its_shards_index_config_and_other_files(source, streamed):
    from safetensors import safe_open
    plan_file, out = streamed
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == {p.name for p in shards}
    for shard in shards:
        with safe_open(shard, framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
            names, size = list(f.keys()), sum(f.get_tensor(k).nbytes for k in f.keys())
        assert size <= 40 * 1024 or len(names) == 1  # --max-shard-size 40KB
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] < 96 and config["hidden_size"] == 64
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    assert G.PruningPlan.load(out / "gdp_plan.json") == G.PruningPlan.load(plan_file)
    assert not list(out.parent.glob(".out.partial*"))


def test_whole_layers_removed_on_the_meta_device_are_dropped_and_renumbered(source, tmp_path, capsys):
    plan = meta_plan(source, tmp_path / "plan.json", seed=2, layers=("model.layers.0",))
    code, _, err = run(capsys, "apply", f"hf:{source}", str(plan), "--out", str(tmp_path / "out"))
    assert code == 0, err
    _, inputs, pruned = in_memory(source, plan, tmp_path / "in_memory")
    same_tensors(tmp_path / "out", tmp_path / "in_memory")
    loaded, info = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()) and loaded.config.num_hidden_layers == 1
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, pruned(**inputs).logits)  # the stand-ins add exact zeros


def test_half_a_layer_removed_is_refused_before_anything_is_written(source, tmp_path, capsys):
    model, inputs = load_hf(f"hf:{source}", meta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = G.analyze(model, inputs)
    G.PruningPlan(removed_blocks=frozenset({analysis.blocks[-1].id})).save(tmp_path / "plan.json", analysis)
    _refused(capsys, tmp_path, source, tmp_path / "plan.json", "no plain config.json describes the pruned model")


def test_head_counts_transformers_refuses_are_refused_before_anything_is_written(tmp_path, capsys):
    source = write_llama(tmp_path / "src", hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                         tokenizer=False)
    model, inputs = load_hf(f"hf:{source}", meta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = G.analyze(model, inputs)
    heads = [g.id for g in analysis.groups if g.unit == "head"]
    assert len(heads) == 2 and all(analysis.groups[g].size == 4 for g in heads)
    G.PruningPlan({g: (0, 1, 2) for g in heads}).save(tmp_path / "plan.json", analysis)  # 64 / 3 heads
    _refused(capsys, tmp_path, source, tmp_path / "plan.json", "transformers refuses the pruned config")


def test_a_single_file_checkpoint_with_tied_embeddings_streams(tmp_path, capsys):
    source = write_llama(tmp_path / "tied", tie_word_embeddings=True, shard_size="10GB", tokenizer=False)
    assert (source / "model.safetensors").is_file()
    plan = meta_plan(source, tmp_path / "plan.json", seed=1)
    code, _, err = run(capsys, "apply", f"hf:{source}", str(plan), "--out", str(tmp_path / "out"))
    assert code == 0, err
    loaded, info = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()) and loaded.lm_head.weight is loaded.model.embed_tokens.weight


def _refused(capsys, tmp_path, source, plan, message) -> None:
    code, out, err = run(capsys, "apply", f"hf:{source}", str(plan), "--out", str(tmp_path / "out"))
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))


def test_a_plan_for_another_model_is_refused_before_anything_is_written(source, tmp_path, capsys):
    other = write_llama(tmp_path / "other", intermediate_size=40, tokenizer=False)
    _refused(capsys, tmp_path, source, meta_plan(other, tmp_path / "other.json"), "invalid pruning plan")


def copy_of(source: Path, folder: Path, leave_out: str = "") -> Path:
    folder.mkdir()
    for p in source.iterdir():
        if p.name != leave_out:
            (folder / p.name).write_bytes(p.read_bytes())
    return folder


def test_a_missing_index_is_refused(source, tmp_path, capsys):
    broken = copy_of(source, tmp_path / "noindex", leave_out="model.safetensors.index.json")
    _refused(capsys, tmp_path, broken, meta_plan(source, tmp_path / "plan.json"), "no model.safetensors.index.json")


def test_a_truncated_shard_is_refused(source, tmp_path, capsys):
    broken = copy_of(source, tmp_path / "truncated")
    last = sorted(broken.glob("*.safetensors"))[-1]
    last.write_bytes(last.read_bytes()[:-10])
    _refused(capsys, tmp_path, broken, meta_plan(source, tmp_path / "plan.json"), "not a readable safetensors file")


def test_a_checkpoint_that_does_not_match_its_config_is_refused(source, tmp_path, capsys):
    broken = copy_of(source, tmp_path / "mismatch")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    _refused(capsys, tmp_path, broken, meta_plan(broken, tmp_path / "plan.json"), "the model built from config.json")


def test_an_existing_output_folder_is_left_alone(source, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "apply", f"hf:{source}", str(meta_plan(source, tmp_path / "p.json")), "--out",
                       str(tmp_path / "out"))
    assert code == 2 and "already exists" in err and (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_a_failure_while_writing_leaves_no_folder(source, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_file(*args, **kwargs)

    save_file = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    code, _, err = run(capsys, "apply", f"hf:{source}", str(meta_plan(source, tmp_path / "p.json")), "--out",
                       str(tmp_path / "out"), "--max-shard-size", "20KB")
    assert code == 2 and "disk full" in err and len(calls) == 2
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))
