"""The examples/ folder and the README's quick start, run as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env={**ENV, **env}, timeout=600)


def gdp_graph(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "gdp_graph.cli.main", *argv], **env)


def test_own_model_example_is_at_most_30_lines_and_prunes(tmp_path):
    assert len((ROOT / "examples" / "own_model.py").read_text().splitlines()) <= 30
    done = gdp_graph("prune", "examples/own_model.py:model", "--task", "examples/own_model.py:task", "--policy", "default",
                     "--target", "0.5", "--out", str(tmp_path / "own"), "--json", "--no-progress", "--no-pictures")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert abs(report["cost"]["flops_kept"] - 0.5) <= 0.05 and report["finalize"]["equal"]


@pytest.mark.slow  # the callback itself is tested in test_integrations.py
@pytest.mark.skipif(importlib.util.find_spec("pytorch_lightning") is None, reason="the 'lightning' extra is not installed")
def test_lightning_example(tmp_path):
    done = run([sys.executable, "examples/lightning_gdp.py", "--epochs", "2", "--out", str(tmp_path / "l")])
    assert done.returncode == 0, done.stderr[-2000:]
    kept = float(re.search(r"FLOPs kept ([0-9.]+)", done.stdout).group(1))
    assert kept < 0.9 and "equal" in done.stdout and (tmp_path / "l" / "pruned.pt").is_file()


@pytest.mark.slow  # reads the real archive
@pytest.mark.skipif(not CIFAR.is_file(), reason="the CIFAR-10 archive is not in ../shared/data/cifar10")
def test_cifar_example_task_file(tmp_path):
    done = gdp_graph("prune", "examples/cifar_resnet.py:model", "--task", "examples/cifar_resnet.py:task",
                     "--policy", "cifar_resnet", "--epochs", "1", "--out", str(tmp_path / "c"), "--json",
                     "--no-progress", "--no-pictures", GDP_GRAPH_CIFAR10=str(CIFAR), CIFAR_SUBSET="256")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["finalize"]["equal"] and report["task_metric"]["original"] is not None


def _quick_start_commands() -> list[str]:
    """The ``gdp-graph`` lines of the README's quick start (continuation lines joined)."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()
            if line.strip().startswith("gdp-graph ")]


def test_readme_quick_start_runs(tmp_path):
    commands = _quick_start_commands()
    assert len(commands) >= 3, commands
    for command in commands:
        argv = [a.replace("runs/", f"{tmp_path}/") for a in shlex.split(command)[1:]]
        done = gdp_graph(*argv, "--no-progress") if argv[0] == "prune" else gdp_graph(*argv)
        assert done.returncode == 0, (command, done.stderr)


@pytest.mark.slow  # a Hugging Face model through the CLI is tested in test_cli_prune.py
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the 'hf' extra is not installed")
def test_hf_decoder_example():
    done = run([sys.executable, "examples/hf_decoder.py", "--steps", "30"])
    assert done.returncode == 0, done.stderr[-2000:]
    kept = float(re.search(r"FLOPs kept ([0-9.]+)", done.stdout).group(1))
    assert kept < 0.9 and "equal" in done.stdout and "output CausalLMOutputWithPast" in done.stdout
