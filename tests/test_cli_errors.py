"""The CLI's error story: exit 1 only when outputs differ, exit 2 with one line for every other
error (library errors and unexpected ones alike), ``--debug`` for the traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gdp_graph.cli.main import main

WRONG_RULE = "tests/fixtures/wrong_rule_model.py:model"
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def gdp_graph(*argv: str) -> subprocess.CompletedProcess:
    """Run the command as a user does, in a fresh process (rules registered by a SPEC file stay there)."""
    return subprocess.run([sys.executable, "-m", "gdp_graph.cli.main", *argv], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=300)


def test_wrong_user_rule_exits_1_and_tolerance_reaches_the_comparison():
    done = gdp_graph("check", WRONG_RULE, "--ratio", "0.5", "--seed", "1", "--json")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is False and data["max_rel_diff"] > 1e-3
    # the same plan passes when the tolerance admits the measured difference: --tolerance is used
    loose = gdp_graph("check", WRONG_RULE, "--ratio", "0.5", "--seed", "1", "--json",
                      "--tolerance", str(data["max_rel_diff"] * 2))
    assert loose.returncode == 0, loose.stderr
    assert json.loads(loose.stdout)["ok"] is True


def test_rewrite_reports_a_difference_instead_of_raising():
    done = subprocess.run([sys.executable, "-c", (
        "import warnings, gdp_graph as G\n"
        "from tests.fixtures.wrong_rule_model import model\n"
        "m, x = model(); a = G.analyze(m, x)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    p = G.apply_plan(a, G.random_plan(a, 0.5, seed=1))\n"
        "print(p.verify.ok, any('differs from the gated reference' in str(x.message) for x in w))\n")],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_unexpected_exception_is_one_line_exit_2(monkeypatch, capsys):
    def boom(*_args, **_kwargs):
        raise RuntimeError("shape mismatch deep inside the user's model")
    monkeypatch.setattr("gdp_graph.graph.analysis.analyze", boom)
    code = main(["check", "tests.fixtures.cli_models:small_cnn"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "RuntimeError: shape mismatch deep inside the user's model" in err and "--debug" in err


def test_debug_shows_the_traceback(monkeypatch, capsys):
    def boom(*_args, **_kwargs):
        raise RuntimeError("kaboom")
    monkeypatch.setattr("gdp_graph.graph.analysis.analyze", boom)
    code = main(["check", "tests.fixtures.cli_models:small_cnn", "--debug"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" in err and "kaboom" in err


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--device", "cuda"], "--device cuda:"),
    (["train", "--policy", "cifar_resnett"], "no such file or shipped policy"),
    (["inspect", "tests.fixtures.cli_models:small_cnn", "--policy", "vitt"], "did you mean 'vit'"),
    (["train", "--pretrain-only"], "--save-pretrained"),
    (["train", "--target", "1.5"], "target.fraction: 1.5 is out of range"),
    (["check", "tests.fixtures.cli_models:small_cnn", "--blocks", "2"], "--blocks"),
])
def test_frictions_are_one_line_exit_2(capsys, argv, fragment):
    if argv[:3] == ["train", "--device", "cuda"]:
        import torch
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert fragment in err and err.count("\n") == 1, err
    assert ":0:0:" not in err and "<string>" not in err


def test_entry_point_runs_without_numpy_warning():
    done = gdp_graph("--version")
    assert done.returncode == 0 and "gdp-graph" in done.stdout
    assert "NumPy" not in done.stderr


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert stop.value.code == 0
    assert "seed of the random plan (default: 0)" in out
    assert "(default: 0.3)" in out and "(default: 0.5)" in out  # --ratio and --blocks
    assert "(default: None)" not in out and "(default: False)" not in out
    for command in ("inspect", "explain", "check", "prune", "apply", "export", "report", "train"):
        assert command in main_help(capsys)


def main_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["--help"])
    return capsys.readouterr().out
