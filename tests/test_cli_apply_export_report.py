"""``apply`` of a saved plan, ``export`` in every installed format, ``report`` — run as a user
runs them (the ``gdp-graph`` entry point in a fresh process)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = "tests.zoo.resnets:resnet_basic"
SHAPE = ("--input-shape", "2,3,16,16")


def gdp_graph(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdp_graph.cli.main", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("apply")
    done = gdp_graph("check", SPEC, *SHAPE, "--ratio", "0.4", "--seed", "2", "--save-plan", str(folder / "saved.json"))
    assert done.returncode == 0, done.stderr
    done = gdp_graph("apply", SPEC, *SHAPE, str(folder / "saved.json"), "--out", str(folder / "out"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["params_after"] < report["params_before"]
    return folder / "out"


def test_apply_writes_a_loadable_model_that_matches_the_plan(applied):
    from gdp_graph.prune.export import load
    from gdp_graph.prune.plan import PruningPlan
    assert PruningPlan.load(applied / "plan.json") == PruningPlan.load(applied.parent / "saved.json")
    pruned = load(applied / "pruned.pt")
    saved = json.loads((applied / "report.json").read_text())
    assert sum(p.numel() for p in pruned.parameters()) == saved["params_after"]
    assert not hasattr(pruned, "gdp_verify")  # the file loads without gdp_graph's classes
    inputs = torch.load(applied / "example_inputs.pt", weights_only=True)
    assert pruned(*inputs).shape == (2, 10)


def test_apply_of_a_plan_from_another_model_is_one_line_exit_2(applied):
    done = gdp_graph("apply", "tests.fixtures.cli_models:small_cnn", str(applied / "plan.json"))
    assert done.returncode == 2
    assert "invalid pruning plan" in done.stderr and done.stderr.count("\n") == 1


def test_apply_missing_plan_names_the_file(tmp_path):
    done = gdp_graph("apply", SPEC, *SHAPE, str(tmp_path / "nope.json"))
    assert done.returncode == 2 and "nope.json: no such plan file" in done.stderr


INSTALLED = ["source", "torchscript", "pt2"] + (["onnx"] if importlib.util.find_spec("onnxscript") else [])


@pytest.mark.parametrize("fmt", INSTALLED)
def test_export_round_trips(applied, tmp_path, fmt):
    target = tmp_path / f"model.{fmt}"
    done = gdp_graph("export", str(applied), "--format", fmt, "--out", str(target), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["path"] == str(target) and target.exists()
    if fmt != "onnx" or importlib.util.find_spec("onnxruntime"):
        assert data["checked"] and data["ok"] and data["max_abs_diff"] < 1e-5


def test_exported_source_imports_with_plain_torch(applied, tmp_path):
    done = gdp_graph("export", str(applied), "--format", "source", "--out", str(tmp_path / "my_pruned"))
    assert done.returncode == 0, done.stderr
    script = "from my_pruned import PrunedModel; import torch; print(tuple(PrunedModel()(torch.randn(1, 3, 16, 16)).shape))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(1, 10)"


def test_report_per_layer_and_latency(applied):
    done = gdp_graph("report", SPEC, *SHAPE, str(applied), "--json", "--rounds", "5", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    layers = {row["layer"]: row for row in data["layers"]}
    assert layers["conv1"]["before"]["channels_out"] == 8
    assert any(row["after"] is None or row["after"]["params"] < row["before"]["params"] for row in data["layers"])
    kept = [r for r in data["layers"] if r["after"] is not None]
    assert sum(r["after"]["params"] for r in kept) == data["params_after"]
    lat = data["latency"]
    assert lat["baseline"]["rounds"] == 5 and lat["threads"] == 1
    assert lat["ratio_q1"] <= lat["ratio"] <= lat["ratio_q3"] and isinstance(lat["significant"], bool)


def test_report_table_flags_insignificant_latency(applied):
    done = gdp_graph("report", SPEC, *SHAPE, str(applied), "--rounds", "3", "--repeat", "1", "--width", "160")
    assert done.returncode == 0, done.stderr
    assert "Per layer" in done.stdout and "latency ratio" in done.stdout


def test_latency_flags_a_spread_wider_than_the_effect():
    from gdp_graph.report.latency import LatencyComparison, Timing
    t = Timing(1.0, 0.9, 1.1, (1.0,))
    assert not LatencyComparison(t, t, 0.98, 0.9, 1.05, 1, 1, 1).significant
    assert LatencyComparison(t, t, 0.6, 0.58, 0.63, 1, 1, 1).significant
    # a narrow spread that still straddles 1 is no evidence either
    assert not LatencyComparison(t, t, 1.001, 0.999, 1.002, 1, 1, 1).significant


def test_time_models_restores_threads_and_modes():
    from gdp_graph.report.latency import compare_latency
    a, b = torch.nn.Linear(8, 8).train(), torch.nn.Linear(8, 4).train()
    threads = torch.get_num_threads()
    result = compare_latency(a, b, (torch.randn(3, 8),), rounds=3, warmup=1, repeat=2, threads=1)
    assert torch.get_num_threads() == threads and a.training and b.training
    assert len(result.baseline.samples) == 3 and result.batch == 3
