"""The latency metric from the command line: one-shot pruning without a task (any metric),
``--metric`` overriding the policy, ``check --metric latency`` and ``report --predict``. Timings
are real here (a tiny model) but never asserted: only that predictions exist, are ratios, and
that the cached table is reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = "tests/fixtures/synthetic_task.py:model"


def gdp_graph(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdp_graph.cli.main", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=600)


@pytest.fixture()
def latency_policy(tmp_path) -> Path:
    path = tmp_path / "latency.yaml"
    path.write_text(f"version: 1\ntarget: {{metric: flops, fraction: 0.5}}\n"
                    f"latency: {{cache: {tmp_path / 'tables'}, points: 3}}\n")
    return path


def test_prune_without_task_to_a_flops_budget(tmp_path):
    out = tmp_path / "run"
    done = gdp_graph("prune", SPEC, "--input-shape", "1,3,8,8", "--method", "magnitude", "--metric", "flops",
                     "--target", "0.5", "--out", str(out), "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["task"] is None and report["method"] == "magnitude" and report["metric"] == "flops"
    assert report["kept"] == pytest.approx(report["cost"]["flops_kept"], rel=1e-6)
    assert abs(report["cost"]["flops_kept"] - 0.5) < 0.1
    assert {"pruned.pt", "plan.json", "report.json"} <= {p.name for p in out.iterdir()}


def test_prune_without_task_to_a_latency_budget(tmp_path, latency_policy):
    done = gdp_graph("prune", SPEC, "--input-shape", "1,3,8,8", "--policy", str(latency_policy), "--method",
                     "magnitude", "--metric", "latency", "--target", "0.6", "--out", str(tmp_path / "run"), "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(list((tmp_path / "tables").glob("*.json"))) == 1  # the policy's cache folder
    assert report["metric"] == "latency" and report["latency"]["points"] == 3
    cost = report["cost"]
    # The table is measured, so only its consistency is checked here, never a timing.
    assert cost["latency_before_s"] > 0 and cost["latency_after_s"] > 0
    assert cost["latency_kept"] == pytest.approx(report["kept"])
    assert cost["latency_after_s"] / cost["latency_before_s"] == pytest.approx(report["kept"], rel=1e-6)
    # the loop closed on the measurement (default: 2 corrections at most): every round recorded
    loop = report["latency_loop"]
    assert 1 <= len(loop["rounds"]) <= 3 and loop["rounds"][0]["aim"] == 0.6
    chosen = loop["rounds"][loop["chosen"]]
    assert chosen["predicted"] == pytest.approx(report["kept"], abs=1e-4)
    assert cost["latency_measured"] == pytest.approx(chosen["measured"], abs=1e-4) and chosen["measured"] > 0
    done = gdp_graph("report", SPEC, str(tmp_path / "run"), "--input-shape", "1,3,8,8", "--no-latency")
    assert done.returncode == 0, done.stderr
    assert "round 0: aimed at 0.600, predicted" in done.stdout


def test_prune_to_latency_without_corrections_trusts_the_table(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(f"version: 1\ntarget: {{metric: latency, fraction: 0.6}}\n"
                      f"latency: {{cache: {tmp_path / 'tables'}, points: 2, corrections: 0}}\n")
    done = gdp_graph("prune", SPEC, "--input-shape", "1,3,8,8", "--policy", str(policy), "--method", "magnitude",
                     "--out", str(tmp_path / "run"), "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["latency_loop"] is None and "latency_measured" not in report["cost"]


def test_prune_without_task_refuses_what_needs_data(tmp_path):
    for extra in (["--method", "taylor"], ["--method", "gdp"], ["--method", "magnitude", "--epochs", "2"]):
        done = gdp_graph("prune", SPEC, "--input-shape", "1,3,8,8", *extra, "--out", str(tmp_path / "x"))
        assert done.returncode == 2 and "--task" in done.stderr, (extra, done.stderr)
    assert not (tmp_path / "x").exists()


def test_check_and_report_show_predicted_latency(tmp_path):
    cache = str(tmp_path / "tables")
    done = gdp_graph("check", SPEC, "--input-shape", "1,3,8,8", "--metric", "latency", "--latency-cache", cache,
                     "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["latency_predicted_ratio"] > 0 and out["latency_measured_ratio"] > 0  # measured: never bounded
    run = tmp_path / "run"
    assert gdp_graph("prune", SPEC, "--input-shape", "1,3,8,8", "--method", "magnitude", "--target", "0.5",
                     "--out", str(run), "--no-progress").returncode == 0
    done = gdp_graph("report", SPEC, str(run), "--input-shape", "1,3,8,8", "--predict", "--latency-cache", cache,
                     "--rounds", "3", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    assert "predicted by the table" in done.stdout and "latency ratio" in done.stdout
