"""``gdp-graph prune`` end to end on a small model with a synthetic-data task file, as a user
runs it; the TASK contract's errors; the pictures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = "tests/fixtures/synthetic_task.py:model"
TASK = "tests/fixtures/synthetic_task.py"


def gdp_graph(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdp_graph.cli.main", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "run"
    done = gdp_graph("prune", SPEC, "--task", f"{TASK}:task", "--policy", "default", "--target", "0.5",
                     "--finetune-epochs", "1", "--out", str(out), "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


def test_prune_writes_model_plan_report(pruned_run):
    out, report = pruned_run
    assert {"pruned.pt", "plan.json", "report.json", "example_inputs.pt"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "report.json").read_text())["cost"] == report["cost"]
    cost = report["cost"]
    assert cost["flops_per_sample_after"] < cost["flops_per_sample_before"]
    assert abs(cost["flops_kept"] - 0.5) <= 0.05, cost  # the budget was steered to the target
    assert report["finalize"]["equal"] is True
    # every FLOPs figure is per sample (the example batch has 4 samples)
    assert report["finalize"]["flops_per_sample_after"] == pytest.approx(cost["flops_per_sample_after"])
    assert "flops_after" not in report["finalize"]
    metrics = report["task_metric"]
    assert metrics["gated"] == pytest.approx(metrics["finalized"])  # finalize is exact
    assert metrics["fine_tuned"] is not None
    missed = abs(cost["flops_kept"] - 0.5) > 0.02  # the default policy's tolerance
    assert any(w.startswith("target missed") for w in report["warnings"]) == missed, report["warnings"]
    history = report["history"]
    assert len(history["step"]) > 2 and history["zero_gates"][-1] > 0


def test_pruned_model_loads_and_its_plan_applies(pruned_run, tmp_path):
    import torch
    from gdp_graph.report.outputs import load_pruned
    out, report = pruned_run
    pruned = load_pruned(out)
    assert sum(p.numel() for p in pruned.parameters()) == report["cost"]["params_after"]
    assert pruned(torch.randn(5, 3, 8, 8)).shape == (5, 2)
    done = gdp_graph("apply", SPEC, str(out / "plan.json"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["params_after"] == report["cost"]["params_after"]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the 'plot' extra is not installed")
def test_prune_draws_the_pictures(pruned_run):
    out, report = pruned_run
    assert sorted(Path(p).name for p in report["pictures"]) == ["gates.png", "trajectory.png"]
    for name in ("gates.png", "trajectory.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_strict_exits_3_when_nothing_is_pruned(tmp_path):
    done = gdp_graph("prune", SPEC, "--task", f"{TASK}:task", "--epochs", "1", "--target", "1.0",
                     "--out", str(tmp_path / "o"), "--strict", "--no-progress", "--no-pictures", "--width", "200")
    assert done.returncode == 3, done.stderr
    assert "nothing was pruned" in done.stdout


def test_task_as_a_dict_is_accepted(tmp_path):
    done = gdp_graph("prune", SPEC, "--task", f"{TASK}:task_as_dict", "--epochs", "1", "--out", str(tmp_path / "o"),
                     "--no-progress", "--no-pictures", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["task_metric"] == {"original": None, "gated": None, "finalized": None}


@pytest.mark.parametrize("task, fragment", [
    (f"{TASK}:task_without_len", "train_loader has no len()"),
    (f"{TASK}:missing", "has no attribute 'missing'"),
    ("tests/fixtures/cli_models.py:small_cnn", "the factory returned tuple"),
])
def test_task_contract_errors_are_one_line_exit_2(tmp_path, task, fragment):
    done = gdp_graph("prune", SPEC, "--task", task, "--out", str(tmp_path / "o"), "--no-progress")
    assert done.returncode == 2, done.stderr
    assert fragment in done.stderr and done.stderr.count("\n") == 1 and "TASK" in done.stderr


def test_target_out_of_range_is_refused_by_name(tmp_path):
    done = gdp_graph("prune", SPEC, "--task", f"{TASK}:task", "--target", "1.5", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "--target 1.5" in done.stderr and ":0:0:" not in done.stderr


def test_inputs_come_from_the_first_batch_when_the_factory_gives_none(tmp_path):
    done = gdp_graph("prune", "tests/fixtures/cli_models.py:model_only", "--task", f"{TASK}:task", "--epochs", "1",
                     "--out", str(tmp_path / "o"), "--json", "--no-progress", "--no-pictures")
    assert done.returncode == 0, done.stderr
    import torch
    assert torch.load(tmp_path / "o" / "example_inputs.pt", weights_only=True)[0].shape == (32, 3, 8, 8)


def test_zero_epochs_is_refused(tmp_path):
    done = gdp_graph("prune", SPEC, "--task", f"{TASK}:task", "--epochs", "0", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "--epochs must be at least 1" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the 'hf' extra is not installed")
def test_prune_and_report_a_hugging_face_decoder_with_keyword_batches(tmp_path):
    out = tmp_path / "hf"
    done = gdp_graph("prune", "tests/fixtures/hf_models.py:tiny_llama", "--task", "tests/fixtures/hf_task.py:task",
                     "--optimizer", "adam", "--out", str(out), "--json", "--no-progress", "--no-pictures")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["finalize"]["equal"] and report["cost"]["params_after"] < report["cost"]["params_before"]
    assert report["task_metric"]["gated"] == pytest.approx(report["task_metric"]["finalized"])
    done = gdp_graph("report", "tests/fixtures/hf_models.py:tiny_llama", str(out), "--json", "--no-latency")
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(done.stdout)
    assert data["params_after"] == report["cost"]["params_after"]
    assert data["flops_per_sample_after"] == pytest.approx(report["cost"]["flops_per_sample_after"])
    # the pruned model is a LlamaForCausalLM again (the gate scales finalize kept folded into the
    # projections), so its layers run as submodules and have per-layer FLOPs
    assert report["pruned_class"] == "LlamaForCausalLM" and report["kept_class_reason"] is None
    assert any(row["after"] and row["after"]["flops"] for row in data["layers"])
    # DIR/hf: the save_pretrained folder, which gives the pruned model's logits
    import torch
    import transformers
    hf = report["hf"]
    assert hf["folder"] == str(out / "hf"), hf
    folder = transformers.AutoModelForCausalLM.from_pretrained(hf["folder"], trust_remote_code=not hf["uniform"]).eval()
    pruned = torch.load(out / "pruned.pt", weights_only=False).eval()
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        assert torch.allclose(folder(ids).logits, pruned(ids).logits, atol=1e-5)


def _schedule_policy(tmp_path, body: str) -> Path:
    path = tmp_path / "scheduled.yaml"
    path.write_text("version: 1\ntarget: {metric: flops, fraction: 0.5}\n" + body)
    return path


def test_policy_schedule_section_sets_the_phases_and_flags_override_it(tmp_path):
    policy = _schedule_policy(tmp_path, "schedule:\n  epochs: 2\n  finetune_epochs: 1\n  optimizer: adam\n  lr: 0.002\n")
    done = gdp_graph("prune", SPEC, "--task", f"{TASK}:task", "--policy", str(policy), "--target", "0.6", "--lr", "0.003",
                     "--out", str(tmp_path / "o"), "--json", "--no-progress", "--no-pictures")
    assert done.returncode == 0, done.stderr
    schedule = json.loads(done.stdout)["schedule"]
    # the policy beats the task's defaults (epochs 4, lr 0.05), the flag beats the policy; the
    # schedule survives the --target override (which rebuilds the policy from its dict)
    assert (schedule["epochs"], schedule["finetune_epochs"], schedule["optimizer"], schedule["lr"]) == (2, 1, "adam", 0.003)


def test_policy_schedule_errors_name_file_line_col(tmp_path):
    policy = _schedule_policy(tmp_path, "schedule:\n  epochs: 0\n  optimiser: adam\n")
    done = gdp_graph("prune", SPEC, "--task", f"{TASK}:task", "--policy", str(policy), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"{policy}:4:11: schedule.epochs" in done.stderr and "did you mean 'optimizer'" in done.stderr
