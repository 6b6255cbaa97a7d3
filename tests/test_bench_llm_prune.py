"""benchmarks/llm_prune.py on a tiny random Llama (the real run loads SmolLM2): one run per kind
of row, its record fields, the saved folder, and the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import tiny_lm  # noqa: E402

from benchmarks import llm_prune, records  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def _args(tmp_path, *extra: str):
    parser_args = ["--steps", "3", "--eval-windows", "2", "--calibration-batches", "2", "--speed-rounds", "1",
                   "--out", str(tmp_path / "r.json"), *extra]
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int); p.add_argument("--eval-windows", type=int)  # noqa: E702
    p.add_argument("--calibration-batches", type=int); p.add_argument("--speed-rounds", type=int)  # noqa: E702
    p.add_argument("--out"); p.add_argument("--lr", type=float, default=1e-3)  # noqa: E702
    p.add_argument("--no-distill", action="store_true"); p.add_argument("--policy", default="llm")  # noqa: E702
    return p.parse_args(parser_args)


@pytest.mark.parametrize("method", ["gdp@activation", "depth", "unpruned"])
def test_one_run_per_kind_of_row(tmp_path, monkeypatch, method):
    monkeypatch.setattr(llm_prune, "ROOT", tmp_path)
    seeds = []
    reseed = llm_prune.reseed_batches
    monkeypatch.setattr(llm_prune, "reseed_batches", lambda task, seed: (seeds.append(seed), reseed(task, seed)))
    args = _args(tmp_path)
    result = llm_prune.run_one(tiny_lm.llama().eval(), tiny_lm.task(), args, 0.6, method, 0)
    assert seeds == [0]  # the run's batches follow its seed
    assert result["ppl_after_recovery"] > 1 and result["ppl_original"] > 1
    assert result["saved_folder_loads"], result["saved_folder_problem"]
    assert result["decode_speedup"] > 0 and result["flops_per_token"] <= result["flops_per_token_original"]
    if method == "unpruned":
        assert result["params_kept"] == 1.0
    else:
        assert result["params_kept"] < 0.9
    if method.startswith("gdp"):
        assert result["init_from"] == "activation" and len(result["gates"]["soft_fraction"]) >= 2
    record = records.new_record(llm_prune.BENCH, llm_prune.settings_of(args, 0.6, method, 0), result, seed=0)
    records.append_record(tmp_path / "r.json", record)
    assert method in llm_prune.table(tmp_path / "r.json")


def test_a_rerun_from_another_checkout_replaces_the_record_and_the_row_names_its_commit(tmp_path):
    result = {"ppl_before_recovery": 10.0, "ppl_after_recovery": 5.0, "params_kept": 0.7, "flops_per_token": 1e9,
              "decode_speedup": 1.2, "ideal_speedup": 1.4, "prefill_speedup": 1.1, "ppl_original": 4.0,
              "flops_per_token_original": 2e9}
    settings = {"method": "activation", "target": 0.7, "seed": 0, "steps": 16, "distill": None}
    recs = [{"benchmark": llm_prune.BENCH, "commit": commit, "result": {**result, "ppl_after_recovery": ppl},
             "settings": {**settings, "policy": f"/work/{checkout}/policies/llm.yaml"}}
            for commit, checkout, ppl in (("aaaaaaa1", "one", 9.0), ("bbbbbbb2", "two", 7.0))]
    import json
    (tmp_path / "r.json").write_text(json.dumps({"records": recs}))
    rows = [line for line in llm_prune.table(tmp_path / "r.json").splitlines() if "| activation |" in line]
    assert rows == ["| 0.7 | activation | 1 | 10.0 | 7.0 | 0.700 | 1.000 | 1.20 (1.40) | 1.10 | bbbbbbb |"]
    assert llm_prune.policy_label("/elsewhere/policies/llm.yaml") == "policies/llm.yaml"


def test_the_seed_sets_the_order_of_the_training_batches_whatever_ran_before():
    task = tiny_lm.task()
    first = [b.clone() for b, _ in zip(task.train_loader, range(3))]
    llm_prune.reseed_batches(task, 0)
    again = [b.clone() for b, _ in zip(task.train_loader, range(3))]
    llm_prune.reseed_batches(task, 1)
    other = [b.clone() for b, _ in zip(task.train_loader, range(3))]
    llm_prune.reseed_batches(task, 0)
    assert all(torch.equal(a, b) for a, b in zip(again, [b for b, _ in zip(task.train_loader, range(3))]))
    assert not all(torch.equal(a, b) for a, b in zip(again, other))
    assert first  # the loader was used before the reseed
