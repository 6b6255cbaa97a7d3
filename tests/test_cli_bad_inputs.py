"""Malformed inputs to every command: one line on stderr, exit 2, and nothing half-written (no
output folder, or the old one untouched): a plan made for another model, unit indices out of
range, a truncated plan or pruned.pt, a task factory that raises, empty loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gdp_graph.cli.main import main

SMALL = "tests.fixtures.cli_models:small_cnn"
OTHER = "tests/fixtures/synthetic_task.py:model"  # the same layer types, other widths


def fails_in_one_line(capsys, argv: list[str], fragment: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("gdp-graph: error:") and "Traceback" not in err, err
    assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A plan saved by check, and a folder written by apply (pruned.pt, plan.json, ...)."""
    where = tmp_path_factory.mktemp("bad")
    assert main(["check", SMALL, "--ratio", "0.5", "--save-plan", str(where / "plan.json"), "--json"]) == 0
    assert main(["apply", SMALL, str(where / "plan.json"), "--out", str(where / "applied"), "--json"]) == 0
    return where


def test_a_plan_records_the_model_it_was_made_for(saved):
    data = json.loads((saved / "plan.json").read_text())
    assert data["model"]["group_sizes"] and "digest" in data["model"]
    assert json.loads((saved / "applied" / "plan.json").read_text())["model"] == data["model"]


def test_a_plan_for_another_model_is_refused(saved, capsys):
    err = fails_in_one_line(capsys, ["apply", OTHER, str(saved / "plan.json"), "--out", str(saved / "o1")],
                            "made for another model")
    assert "sizes 8, 8" in err and "sizes 16, 16" in err
    assert not (saved / "o1").exists()


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["keep"].update({"0": [1, 2, 99]}), "unit index out of range"),
    (lambda d: d["keep"].update({"57": [0]}), "group 57 does not exist"),
    (lambda d: d.update({"removed_blocks": [3]}), "block 3 does not exist"),
])
def test_a_plan_naming_what_the_model_lacks_is_refused(saved, capsys, tmp_path, change, fragment):
    data = json.loads((saved / "plan.json").read_text())
    del data["model"]  # a hand-written plan, or one saved before plans said what they were made for
    change(data)
    (tmp_path / "plan.json").write_text(json.dumps(data))
    fails_in_one_line(capsys, ["apply", SMALL, str(tmp_path / "plan.json"), "--out", str(tmp_path / "o")], fragment)
    assert not (tmp_path / "o").exists()


def test_a_truncated_plan_is_refused(saved, capsys, tmp_path):
    (tmp_path / "plan.json").write_text((saved / "plan.json").read_text()[:40])
    fails_in_one_line(capsys, ["apply", SMALL, str(tmp_path / "plan.json"), "--out", str(tmp_path / "o")],
                      "not a pruning plan")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["export", "report"])
def test_a_truncated_pruned_model_is_refused(saved, capsys, tmp_path, command):
    truncated = tmp_path / "pruned.pt"
    truncated.write_bytes((saved / "applied" / "pruned.pt").read_bytes()[:2000])
    argv = (["export", str(truncated), "--format", "source", "--out", str(tmp_path / "exported")]
            if command == "export" else ["report", SMALL, str(truncated), "--no-latency"])
    fails_in_one_line(capsys, argv, "cannot load a pruned model")
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("factory, fragment", [
    ("raises", "the factory raised RuntimeError: dataset folder missing"),
    ("empty_train", "train_loader is empty"),
    ("empty_eval", "eval_loader is empty"),
])
def test_a_task_that_cannot_train_is_refused_before_anything_is_written(capsys, tmp_path, factory, fragment):
    fails_in_one_line(capsys, ["prune", SMALL, "--task", f"tests/fixtures/bad_tasks.py:{factory}", "--epochs", "1",
                               "--finetune-epochs", "0", "--out", str(tmp_path / "run"), "--no-progress"], fragment)
    assert not (tmp_path / "run").exists()


def test_a_failed_write_leaves_the_output_folder_as_it_was(saved, tmp_path, monkeypatch):
    from gdp_graph.prune.plan import PruningPlan
    from gdp_graph.report import outputs
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "plan.json").write_text("old")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "save", full_disk)
    with pytest.raises(OSError):
        outputs.write_outputs(folder, torch.nn.Linear(2, 2), PruningPlan(), {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "a staging folder was left behind"
    assert [p.name for p in folder.iterdir()] == ["plan.json"] and (folder / "plan.json").read_text() == "old"


def test_an_export_that_fails_half_way_leaves_nothing(saved, capsys, tmp_path, monkeypatch):
    from gdp_graph.prune import export

    def broken(module, path):  # after fx's to_folder wrote the package, as a crash there would
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_import_wrapped_functions", broken)
    target = tmp_path / "exported"
    fails_in_one_line(capsys, ["export", str(saved / "applied"), "--format", "source", "--out", str(target)],
                      "exporting")
    assert not target.exists()


def test_report_refuses_a_pruned_folder_of_another_model(saved, capsys):
    fails_in_one_line(capsys, ["report", OTHER, str(saved / "applied"), "--no-latency"], "pruned from another model")
    assert main(["report", SMALL, str(saved / "applied"), "--no-latency", "--json"]) == 0
