"""benchmarks/records.py: what every benchmark record carries, atomic appends, resumable reruns."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import records


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A scratch git repository standing in for the project root, with one clean commit."""
    root = tmp_path / "repo"
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "code.py").write_text("x = 1\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "code.py"], ["commit", "-q", "-m", "one"]):
        subprocess.run(["git", "-C", str(root), *cmd], check=True, env=env)
    monkeypatch.setattr(records, "ROOT", root)
    return root


def test_a_record_carries_commit_command_seed_checkpoints_machine_and_date(repo, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights" * 1000)
    rec = records.new_record("bench", {"model": "resnet20"}, {"acc": 0.9}, seed=3, checkpoints=[ckpt],
                             note="shared machine", argv=["python3.11", "-u", str(repo / "b.py"), "--x", "a b"])
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rec["commit"] == head and rec["dirty"] is False
    assert rec["command"] == "python3.11 -u b.py --x 'a b'"
    assert rec["seed"] == 3 and rec["note"] == "shared machine"
    assert rec["checkpoints"] == {str(ckpt): hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    assert {"cpu", "cores", "torch", "threads"} <= set(rec["machine"])
    assert rec["date"].endswith("Z") and rec["settings"] == {"model": "resnet20"} and rec["result"] == {"acc": 0.9}


def test_a_changed_tracked_file_makes_the_record_dirty_but_a_results_file_does_not(repo):
    results = repo / "benchmarks" / "results" / "r.json"
    results.write_text("{}")
    subprocess.run(["git", "-C", str(repo), "add", "-f", str(results)], check=True)
    results.write_text('{"records": []}')
    assert records.git_state()["dirty"] is False
    (repo / "code.py").write_text("x = 2\n")
    assert records.git_state()["dirty"] is True


def test_append_keeps_earlier_records_and_what_predates_records(tmp_path):
    old = {"benchmark": "analysis_speed", "models": {"resnet50": {"median_s": 1.0}}}
    path = tmp_path / "results" / "a.json"
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    records.append_record(path, {"benchmark": "a", "n": 1})
    records.append_record(path, {"benchmark": "a", "n": 2})
    data = json.loads(path.read_text())
    assert data["models"] == old["models"] and [r["n"] for r in data["records"]] == [1, 2]
    assert records.load_records(path) == data["records"]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"model": "x"}]))
    records.append_record(listed, {"n": 1})
    assert json.loads(listed.read_text()) == {"legacy": [{"model": "x"}], "records": [{"n": 1}]}


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    records.append_record(path, {"n": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        records.append_record(path, {"n": object()})  # not JSON
    assert path.read_bytes() == before

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(records.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        records.append_record(path, {"n": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"], "a temporary file was left behind"


@pytest.mark.parametrize("content", ["{not json", '"a string"', '{"records": 3}'])
def test_a_file_that_cannot_hold_records_is_refused_and_untouched(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(records.RecordsError, match="r.json"):
        records.append_record(path, {"n": 1})
    assert path.read_text() == content


def test_recorded_finds_the_same_settings_at_the_same_clean_commit_only(repo):
    path = repo / "benchmarks" / "results" / "r.json"
    settings = {"model": "resnet20", "targets": (0.5, 0.35)}
    assert records.recorded(path, "bench", settings) is None
    records.append_record(path, records.new_record("bench", settings, {"acc": 0.9}))
    assert records.recorded(path, "bench", settings)["result"] == {"acc": 0.9}
    assert records.recorded(path, "bench", {**settings, "model": "resnet56"}) is None
    assert records.recorded(path, "other", settings) is None
    (repo / "code.py").write_text("x = 2\n")  # a dirty tree: the code that would run is not the commit's
    assert records.recorded(path, "bench", settings) is None
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-am", "two"], check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    assert records.recorded(path, "bench", settings) is None  # a new commit reruns


def test_pending_skips_what_this_commit_recorded_unless_rerun(repo, capsys):
    path = repo / "benchmarks" / "results" / "r.json"
    runs = [(t, {"target": t}) for t in (0.7, 0.5)]
    records.append_record(path, records.new_record("bench", {"target": 0.7}, {"acc": 0.9}))
    assert [k for k, _ in records.pending(path, "bench", runs)] == [0.5]
    assert "skip 0.7" in capsys.readouterr().out
    assert [k for k, _ in records.pending(path, "bench", runs, rerun=True)] == [0.7, 0.5]


def test_table_flag_prints_the_results_files_table_instead_of_running(tmp_path, capsys):
    p = argparse.ArgumentParser()
    records.add_record_flags(p, results=tmp_path / "r.json", results_flag="--out")
    assert records.parse_or_table(p, ["--table"], lambda path: f"table of {path.name}") is None
    assert capsys.readouterr().out == "table of r.json\n"
    args = records.parse_or_table(p, ["--out", str(tmp_path / "x.json")], lambda path: "unused")
    assert args.out == tmp_path / "x.json" and not args.table


def test_protocol_presets_set_defaults_that_explicit_flags_override():
    protocols = {"cpu-short": {"epochs": 3, "subset": 1000}, "full": {"epochs": 30, "subset": 50000}}

    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser()
        p.add_argument("--epochs", type=int, default=1)
        p.add_argument("--subset", type=int, default=1)
        records.add_record_flags(p)
        return p

    args = records.parse_with_protocol(parser(), protocols, "cpu-short", [])
    assert (args.protocol, args.epochs, args.subset, args.note, args.rerun) == ("cpu-short", 3, 1000, None, False)
    args = records.parse_with_protocol(parser(), protocols, "cpu-short", ["--protocol", "full", "--epochs", "5"])
    assert (args.epochs, args.subset) == (5, 50000)
    with pytest.raises(SystemExit):
        records.parse_with_protocol(parser(), protocols, "cpu-short", ["--protocol", "nope"])


def test_latest_run_gathers_one_commit_and_settings_keyed_by_model(tmp_path):
    path = tmp_path / "r.json"

    def rec(model: str, commit: str, repeats: int, value: float) -> dict:
        return {"benchmark": "speed", "settings": {"model": model, "repeats": repeats}, "result": {"s": value},
                "commit": commit, "machine": {}, "date": "d"}

    for r in (rec("a", "c1", 3, 1.0), rec("b", "c1", 3, 2.0), rec("a", "c2", 3, 3.0), rec("b", "c2", 5, 4.0),
              rec("c", "c2", 5, 5.0), rec("b", "c2", 5, 6.0)):
        records.append_record(path, r)
    run = records.latest_run(path, "speed")
    assert run["record"]["result"] == {"s": 6.0}
    assert run["rows"] == {"b": {"s": 6.0}, "c": {"s": 5.0}}  # not c2's repeats-3 row, not c1's
    assert records.latest_run(path, "other") is None


# every script that writes records, on its smallest settings (full-size models are analysed once)
SMOKE = {
    "analysis_speed": ["--no-peer", "--repeats", "1", "--models", "mobilenet_v3_large"],
    "attach_speed": ["--repeats", "1", "--models", "mobilenet_v3_large"],
    "latency_pruned": ["--models", "mobilenet_v3_large", "--rounds", "1", "--number", "1", "--empty-only"],
    "gate_overhead": ["--depth", "8", "--batch", "4", "--reps", "1", "--warmup", "0"],
    "memory_format": ["--depth", "8", "--batch", "4", "--reps", "1", "--warmup", "0"],
}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_each_benchmark_appends_a_full_record_and_the_tables_read_it(script, tmp_path, monkeypatch):
    import importlib

    import torch

    out = tmp_path / f"{script}.json"
    module = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr("sys.argv", [f"benchmarks/{script}.py", *SMOKE[script], "--out", str(out), "--note", "[a] b"])
    threads = torch.get_num_threads()
    try:
        module.main()
    finally:
        torch.set_num_threads(threads)
    (rec,) = records.load_records(out)
    assert rec["benchmark"] == script and rec["note"] == "[a] b" and rec["result"]
    assert rec["commit"] and isinstance(rec["dirty"], bool) and "--note" in rec["command"]
    assert {"cpu", "cores", "torch", "threads"} <= set(rec["machine"])
    if script in ("analysis_speed", "attach_speed", "latency_pruned"):
        from benchmarks import performance_tables as pt

        report = pt._load(out)
        table = {"analysis_speed": lambda r: pt.analysis_table(r, None),
                 "attach_speed": pt.attach_table, "latency_pruned": pt.latency_compact}[script](report)
        assert "| mobilenet_v3_large |" in table
    else:  # gate_overhead, memory_format: a table of every run in the file
        assert rec["date"][:10] in module.table(out) and "ResNet-8" in module.table(out)


def test_zoo_table_records_a_model_and_prints_the_table_from_the_file(tmp_path):
    from benchmarks import zoo_table
    row = zoo_table.measure("resnet_basic", 0.3, 0, 0.5)
    assert row["ok"] and row["params_removed"] > 0 and row["blocks_removed"] > 0
    path = tmp_path / "zoo.json"
    settings = {"model": "resnet_basic", "ratio": 0.3, "seed": 0, "blocks": 0.5}
    records.append_record(path, records.new_record("zoo_table", settings, row, seed=0))
    text = zoo_table.table(path)
    assert "| resnet_basic |" in text and "| yes |" in text and "0.3 of every prunable group" in text


def test_the_cifar_table_protocol_is_one_word_and_flags_still_win(monkeypatch):
    from benchmarks import cifar_methods
    seen: list = []
    monkeypatch.setattr(cifar_methods, "cmd_run", lambda args: seen.append(vars(args)))
    cifar_methods.main(["run", "--data", "d.tar.gz", "--protocol", "cpu-short"])
    cifar_methods.main(["run", "--data", "d.tar.gz", "--protocol", "cpu-short", "--sparse-epochs", "5"])
    cifar_methods.main(["run", "--data", "d.tar.gz"])
    assert [(s["sparse_epochs"], s["finetune_epochs"], s["pretrain_epochs"]) for s in seen] == \
        [(3, 1, 15), (5, 1, 15), (6, 2, 15)]


def test_hf_models_records_a_model_and_prints_the_table_from_the_file(tmp_path):
    pytest.importorskip("transformers")
    from benchmarks import hf_models
    from tests.test_hf_models import MODELS
    row = hf_models.measure(MODELS["gpt2"], 0.5, 0)
    assert row["ok"] and row["ok_with_blocks"] and row["blocks_removed"] > 0
    path = tmp_path / "hf.json"
    records.append_record(path, records.new_record("hf_models", {"model": "gpt2", "ratio": 0.5, "seed": 0}, row))
    assert "| gpt2 | " in hf_models.table(path)


def test_run_and_table_commands(tmp_path):
    p = argparse.ArgumentParser()
    run = records.run_and_table_commands(p, tmp_path / "r.json")
    run.add_argument("--ratio", type=float, default=0.3)
    args = p.parse_args(["run", "--note", "[x]", "--ratio", "0.5"])
    assert (args.command, args.out, args.note, args.rerun, args.ratio) == ("run", tmp_path / "r.json", "[x]", False, 0.5)
    assert p.parse_args(["table"]).results == tmp_path / "r.json"
    with pytest.raises(SystemExit):
        p.parse_args([])
