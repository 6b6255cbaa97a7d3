"""Verification of half-precision models: compared in float32, so a correct plan verifies equal
while a rewrite that is off by about bfloat16's own rounding is still reported as different."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import gdp_graph as G
from gdp_graph.prune.verify import compare_outputs, gated_reference, run_for_comparison
from tests.fixtures.hf_models import llama_bf16
from tests.fixtures.wrong_rule_model import model_bf16

pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
ROOT = Path(__file__).resolve().parents[1]


def gdp_graph(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdp_graph.cli.main", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def analyses():
    cache = {}

    def get(dtype):
        if dtype not in cache:
            model, inputs = llama_bf16(dtype)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[dtype] = model, G.analyze(model, inputs)
        return cache[dtype]
    return get


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_correct_plan_on_a_half_model_verifies_equal(analyses, dtype):
    model, a = analyses(dtype)
    plan = G.random_plan(a, 0.3, seed=0, block_ratio=0.5)
    assert plan.keep and plan.removed_blocks
    for keep_class in (False, None):
        pruned_applied = G.apply_plan(a, plan, keep_class=keep_class)
        pruned = pruned_applied.model
        assert pruned_applied.verify.ok and pruned_applied.verify.max_rel_diff < 1e-5, pruned_applied.verify
        assert {p.dtype for p in pruned.parameters()} == {dtype}  # verified in float32, left in its dtype
    assert type(pruned) is type(model)
    with torch.no_grad():  # the kept class (stand-ins of the removed blocks included) runs in its dtype
        assert pruned(**a.traced.inputs.kwargs).logits.dtype == dtype


def test_comparing_in_float32_leaves_the_model_as_it_was(analyses):
    model, a = analyses(torch.bfloat16)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run_for_comparison(model, (), a.traced.inputs.kwargs)
    assert out.logits.dtype == torch.float32 and model.training
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    model.eval()


def test_a_graph_with_bfloat16_casts_baked_in_runs_in_float32(analyses):
    _, a = analyses(torch.bfloat16)
    plan = G.random_plan(a, 0.3, seed=1)
    reference = gated_reference(a, plan)  # an exported graph: its casts name torch.bfloat16
    assert any(torch.bfloat16 in n.args or torch.bfloat16 in n.kwargs.values() for n in reference.graph.nodes)
    out = run_for_comparison(reference, a.traced.example_inputs)
    assert out.logits.dtype == torch.float32


def test_a_slightly_wrong_bfloat16_model_is_caught(analyses):
    _, a = analyses(torch.bfloat16)
    plan = G.random_plan(a, 0.3, seed=0)
    pruned = G.rewrite(a, plan, keep_class=False)
    with torch.no_grad():  # one weight row a bfloat16 step off
        weight = dict(pruned.named_parameters())["model.layers.1.mlp.down_proj.weight"]
        weight[0] += weight[0].abs().clamp_min(2.0 ** -10) * 2.0 ** -6
    result = G.verify(a, plan, pruned)
    assert not result.ok and result.max_rel_diff > 1e-4, result


def test_apply_of_a_wrong_rewrite_in_bfloat16_exits_1(tmp_path):
    model, inputs = model_bf16()
    a = G.analyze(model, inputs)
    G.random_plan(a, 0.5, seed=0).save(tmp_path / "plan.json")
    done = gdp_graph("apply", "tests/fixtures/wrong_rule_model.py:model_bf16", str(tmp_path / "plan.json"))
    assert done.returncode == 1, done.stderr
    assert "OUTPUTS DIFFER" in done.stdout


def test_check_of_a_correct_bfloat16_llama_exits_0():
    done = gdp_graph("check", "tests/fixtures/hf_models.py:llama_bf16", "--json", "--blocks", "0.5")
    assert done.returncode == 0, done.stderr + done.stdout
    assert '"ok": true' in done.stdout


def test_half_outputs_against_a_float32_reference_compare_in_double():
    ref = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    assert compare_outputs(ref, ref.bfloat16(), 1e-5).max_rel_diff > 1e-5  # rounding shows ...
    assert compare_outputs(ref, ref.bfloat16().float(), 1e-2).ok  # ... and stays below bf16's step
