"""`gdp-graph train` end to end on a tiny synthetic CIFAR-10 archive (the real one: -m slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gdp_graph.cli.main import main
from gdp_graph.prune.export import load
from tests.fixtures.cifar10_synthetic import Synthetic

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"


def _train(capsys, data, out, *extra):
    return _train_and_console(capsys, data, out, *extra)[0]


def _train_and_console(capsys, data, out, *extra):
    """The ``--json`` report and the console (stderr) of one run."""
    code = main(["train", "--data", str(data), "--depth", "8", "--batch-size", "16", "--pretrain-epochs", "1",
                 "--gdp-epochs", "2", "--finetune-epochs", "1", "--device", "cpu", "--latency-rounds", "2", "--json", "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), captured.err


def test_train_pipeline_runs_and_finalized_equals_gated(tmp_path, capsys):
    synth = Synthetic(tmp_path)
    report = _train(capsys, synth.archive, tmp_path / "run")
    assert report["acc_gated"] == report["acc_finalized"]
    assert report["in_band"] and abs(report["kept"] - 0.5) <= 0.01  # FlopCounterMode on the pruned model
    assert report["finalize"]["removed_units"] > 0 and report["fix"]["cut_units"] == report["finalize"]["removed_units"]
    assert sum(report["finalize"]["removed_by_group"].values()) == report["finalize"]["removed_units"]
    assert [t["epoch"] for t in report["trajectory"]] == [1, 2] and report["trajectory"][-1]["fixed"]
    history = report["controller_history"]  # per iteration until the cut
    assert [h["step"] for h in history] == list(range(1, report["fix"]["step"] + 1))
    assert all(h["lambda"] > 0 and 0 <= h["soft_fraction"] <= 1 for h in history)
    # the short preset cuts at 15% of the gated phase (gates.step: its iterations)
    assert report["settings"]["fix_at"] == 0.15 and report["fix"]["step"] == max(1, round(0.15 * report["gdp_steps"]))
    assert report["gated_epochs"] == 2 and "acc_gdp_end" not in report  # finalized at the end of the phase
    assert 0 <= report["acc_unpruned_same_epochs"] <= 1
    assert report["finalize"]["max_rel_diff"] <= 1e-4
    assert report["flops_after"] <= report["flops_before"]
    assert 0 <= report["acc_finetuned"] <= 1
    pruned = load(tmp_path / "run" / "pruned.pt")
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["regularizer"] == "gdp" and saved["target"] == 0.5
    from gdp_graph.prune.plan import PruningPlan  # --out keeps its promise: the plan is written too
    assert PruningPlan.load(tmp_path / "run" / "plan.json").keep


def test_train_reports_a_held_out_split_never_trained_on(tmp_path, capsys):
    """--heldout N evaluates on the N training images after the training subset (settings are
    chosen there, not on the test images); the split is absent when no images are left."""
    synth = Synthetic(tmp_path)
    n = len(synth.train_labels)
    report = _train(capsys, synth.archive, tmp_path / "run", "--train-subset", str(n - 8), "--heldout", "8",
                    "--batch-size", "8")
    held = report["heldout"]
    assert set(held) == {"acc_pretrained", "acc_finalized", "acc_finetuned", "acc_unpruned_same_epochs"}
    assert all(0 <= v <= 1 for v in held.values())
    assert all(v * 8 == round(v * 8) for v in held.values())  # accuracies over exactly 8 images
    report = _train(capsys, synth.archive, tmp_path / "run2", "--train-subset", str(n), "--heldout", "8")
    assert "heldout" not in report


@pytest.mark.parametrize("regularizer", ["polarization", "l1"])
def test_train_with_baseline_regularizers(tmp_path, capsys, regularizer):
    synth = Synthetic(tmp_path)
    report = _train(capsys, synth.archive, tmp_path / "run", "--regularizer", regularizer, "--target", "0.7")
    assert report["regularizer"] == regularizer and report["target"] == 0.7
    assert report["acc_gated"] == report["acc_finalized"]


def test_train_bad_data_is_one_line_error(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "missing.tar.gz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing.tar.gz" in err


@pytest.mark.slow
@pytest.mark.skipif(not REAL.exists(), reason="the shared CIFAR-10 archive is not present")
def test_short_schedule_on_real_cifar10(tmp_path, capsys):
    report = _train(capsys, REAL, tmp_path / "run", "--train-subset", "2000", "--test-subset", "500")
    assert report["acc_gated"] == report["acc_finalized"]
    assert report["acc_pretrained"] > 0.15  # better than chance after one epoch on 2000 images


def test_a_missed_budget_is_said_loudly_and_exits_3(tmp_path, capsys):
    """The policy's limits (residual streams keep half) make 5% of the FLOPs unreachable."""
    synth = Synthetic(tmp_path)
    code = main(["train", "--data", str(synth.archive), "--depth", "8", "--batch-size", "16", "--pretrain-epochs", "1",
                 "--gdp-epochs", "1", "--finetune-epochs", "0", "--device", "cpu", "--latency-rounds", "1",
                 "--no-compare-unpruned", "--target", "0.05"])
    captured = capsys.readouterr()
    assert code == 3
    assert "BUDGET MISSED" in captured.out and "target 0.05" in captured.out


def test_fix_at_on_the_command_line_overrides_the_preset_and_the_policy(tmp_path, capsys):
    synth = Synthetic(tmp_path)
    report = _train(capsys, synth.archive, tmp_path / "run", "--fix-at", "0.5", "--no-compare-unpruned")
    assert report["settings"]["fix_at"] == 0.5 and report["fix"]["step"] == round(0.5 * report["gdp_steps"])


def test_finalize_at_cut_trains_the_smaller_model_for_the_rest_of_the_phase(tmp_path, capsys):
    synth = Synthetic(tmp_path)
    report = _train(capsys, synth.archive, tmp_path / "run", "--finalize-at-cut", "--no-compare-unpruned")
    # the cut falls in epoch 1: finalized at its end, the smaller model trains epoch 2
    assert report["gated_epochs"] == 1 and [t["model"] for t in report["trajectory"]] == ["gated", "finalized"]
    assert report["acc_gated"] == report["acc_finalized"] and 0 <= report["acc_gdp_end"] <= 1


def test_compare_runs_polarization_and_a_one_shot_method_on_the_same_schedule(tmp_path, capsys):
    synth = Synthetic(tmp_path)
    report, console = _train_and_console(capsys, synth.archive, tmp_path / "run", "--no-compare-unpruned", "--set",
                                         "regularizer.init=taylor", "--compare", "polarization", "--compare", "magnitude")
    assert report["gate_init"] == "taylor"
    assert set(report["compare"]) == {"polarization", "magnitude"}
    for method, c in report["compare"].items():
        assert 0 <= c["acc_finetuned"] <= 1 and abs(c["kept"] - 0.5) <= 0.05, method
        # how the method spread its cut over the groups (a 0.5 FLOPs cut removes units)
        assert c["removed_by_group"] and all(n > 0 for n in c["removed_by_group"].values()), method
    assert "units cut" in console  # the console's comparison table


def test_set_overrides_a_policy_key_and_a_bad_one_is_one_line(tmp_path, capsys):
    synth = Synthetic(tmp_path)
    report = _train(capsys, synth.archive, tmp_path / "run", "--no-compare-unpruned", "--set",
                    "regularizer.epsilon.end_at=0.5")
    assert report["fix"]["step"] >= 1
    code = main(["train", "--data", str(synth.archive), "--set", "regularizer.init=fisher"])
    err = capsys.readouterr().err
    assert code == 2 and "fisher" in err and "Traceback" not in err


def test_the_command_line_is_read_once_into_settings():
    """run_pipeline takes a TrainSettings: the preset with the flags given on top, no argparse."""
    from gdp_graph.cli.cmd_train import settings_from_args
    from gdp_graph.cli.main import build_parser
    from gdp_graph.recipes.cifar10.pipeline import PRESETS, CifarPreset

    args = build_parser().parse_args(["train", "--gdp-epochs", "3", "--no-compare-unpruned", "--set", "a.b=1",
                                      "--compare", "magnitude", "--preset", "full"])
    settings = settings_from_args(args)
    assert settings.preset == CifarPreset(**{**PRESETS["full"], "gdp_epochs": 3, "compare_unpruned": False})
    assert settings.policy_set == ("a.b=1",) and settings.compare == ("magnitude",) and settings.seed == 0
