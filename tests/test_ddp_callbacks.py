"""The Lightning callback under ``strategy="ddp"`` and the Hugging Face Trainer callback under
``torchrun`` and ``accelerate launch``: two CPU processes (gloo), different data per rank, and
both ranks end with the same gates, lambda, controller state, plan and pruned weights
(tests/fixtures/ddp_callbacks.py); a Lightning DDP run resumed from its epoch-0 checkpoint ends
as the run that never stopped."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "tests/fixtures/ddp_callbacks.py"
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")


def _run(argv: list[str], out: Path, kind: str) -> list[dict]:
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"{kind}-rank{r}.pt", weights_only=False) for r in range(2)]


def _same_on_both_ranks(a: dict, b: dict) -> None:
    assert a["losses"] != b["losses"]  # each rank trained on its own share of the data ...
    assert all(torch.equal(x, y) for x, y in zip(a["theta"], b["theta"]))  # ... and the gates agree
    assert a["lambda"] == b["lambda"] != 0.05 and a["controller"] == b["controller"]
    assert a["fixed"] and b["fixed"] and a["plan"] == b["plan"] and a["plan"]["keep"]
    assert a["equal"] and b["equal"]
    assert a["pruned"].keys() == b["pruned"].keys()
    assert all(torch.equal(a["pruned"][k], b["pruned"][k]) for k in a["pruned"])


@pytest.mark.slow  # two Lightning processes: over a minute on a busy 2-core machine
@pytest.mark.skipif(importlib.util.find_spec("pytorch_lightning") is None and importlib.util.find_spec("lightning") is None,
                    reason="the 'lightning' extra is not installed")
def test_lightning_ddp_two_ranks_end_with_the_same_plan(tmp_path):
    a, b = _run([sys.executable, SCRIPT, "lightning", str(tmp_path)], tmp_path, "lightning")
    _same_on_both_ranks(a, b)


@pytest.mark.slow  # three Lightning DDP runs
@pytest.mark.skipif(importlib.util.find_spec("pytorch_lightning") is None and importlib.util.find_spec("lightning") is None,
                    reason="the 'lightning' extra is not installed")
def test_lightning_ddp_resumes_mid_gate_phase_from_its_checkpoint(tmp_path):
    whole = _run([sys.executable, SCRIPT, "lightning-whole", str(tmp_path)], tmp_path, "lightning-whole")
    saved = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=False)
    assert saved["global_step"] < whole[0]["fix_step"]  # saved before the cut
    resumed = _run([sys.executable, SCRIPT, "lightning-resumed", str(tmp_path)], tmp_path, "lightning-resumed")
    _same_on_both_ranks(*resumed)
    _resumed_as_whole(resumed, whole)


def _resumed_as_whole(resumed: list[dict], whole: list[dict]) -> None:
    for a, b in zip(resumed, whole):
        assert a["plan"] == b["plan"] and a["lambda"] == b["lambda"] and a["controller"] == b["controller"]
        assert all(torch.equal(x, y) for x, y in zip(a["theta"], b["theta"]))
        assert all(torch.equal(a["pruned"][k], b["pruned"][k]) for k in a["pruned"])


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("accelerate") is None,
                    reason="the 'hf' extra is not installed")
def test_hf_trainer_under_torchrun_two_ranks_end_with_the_same_plan(tmp_path):
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, "hf",
            str(tmp_path)]
    a, b = _run(argv, tmp_path, "hf")
    assert a["world"] == b["world"] == 2
    _same_on_both_ranks(a, b)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("accelerate") is None,
                    reason="the 'hf' extra is not installed")
def test_hf_trainer_under_accelerate_launch_two_ranks_end_with_the_same_plan(tmp_path):
    # --multi_gpu is accelerate's torch.distributed launcher; the script's use_cpu=True keeps it on gloo
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, "hf", str(tmp_path)]
    a, b = _run(argv, tmp_path, "hf")
    assert a["world"] == b["world"] == 2
    _same_on_both_ranks(a, b)


@pytest.mark.slow  # two torchrun launches
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("accelerate") is None,
                    reason="the 'hf' extra is not installed")
def test_hf_trainer_under_torchrun_resumes_mid_gate_phase_from_its_checkpoint(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT]
    whole = _run([*torchrun, "hf-whole", str(tmp_path)], tmp_path, "hf-whole")
    assert whole[0]["fix_step"] > 4 and (tmp_path / "hf" / "checkpoint-4" / "gdp_state.pt").is_file()
    resumed = _run([*torchrun, "hf-resumed", str(tmp_path)], tmp_path, "hf-resumed")
    _same_on_both_ranks(*resumed)
    _resumed_as_whole(resumed, whole)
