"""benchmarks/cifar_main_command.py's table from records (synthetic: no training)."""

import json

import pytest

from benchmarks.cifar_main_command import BENCHMARK, pair, paired_table, rows, table, widths


def _record(variant: str, seed: int, test: float, held: float, compare=None) -> dict:
    result = {"test": {"acc_finetuned": test}, "heldout": {"acc_finetuned": held}, "kept": 0.5}
    if compare:
        result["compare"] = {m: {"acc_finetuned": a, "heldout_acc_finetuned": a, "kept": 0.5} for m, a in compare.items()}
    return {"benchmark": BENCHMARK, "settings": {"variant": variant, "seed": seed}, "seed": seed, "commit": "abcdef0123",
            "result": result}


def test_the_table_has_a_row_per_variant_and_compared_method_with_the_spread_over_seeds(tmp_path):
    path = tmp_path / "r.json"
    recs = [_record("", 0, 0.40, 0.41, {"polarization": 0.39}), _record("", 1, 0.42, 0.43, {"polarization": 0.41}),
            _record("--regularizer polarization", 0, 0.38, 0.37), {"benchmark": "other", "result": {}}]
    path.write_text(json.dumps({"records": recs}))
    got = rows(path)
    assert list(got) == ["(as shipped) [abcdef0]", "(as shipped) [abcdef0], compare polarization",
                         "--regularizer polarization [abcdef0]"]
    text = table(path)
    assert "| (as shipped) [abcdef0] | 0,1 | 0.4200 ± 0.0141 | 0.4100 ± 0.0141 | 0.5000 ± 0.0000 |" in text
    assert "| --regularizer polarization [abcdef0] | 0 | 0.3700 | 0.3800 | 0.5000 |" in text


def test_thread_settings_get_their_own_rows_and_the_unpruned_model_its_row(tmp_path):
    path = tmp_path / "r.json"
    recs = []
    for threads, seed in (("1", 0), ("1", 1), ("default", 0)):
        rec = _record("", seed, 0.40 + seed / 100, 0.41, {"magnitude": 0.39})
        rec["settings"]["threads"] = threads
        rec["result"]["test"]["acc_unpruned_same_epochs"] = 0.45
        rec["result"]["heldout"]["acc_unpruned_same_epochs"] = 0.46
        recs.append(rec)
    path.write_text(json.dumps({"records": recs}))
    got = rows(path)
    assert list(got) == ["(as shipped) [abcdef0, 1 threads]", "(as shipped) [abcdef0, 1 threads], unpruned",
                         "(as shipped) [abcdef0, 1 threads], compare magnitude", "(as shipped) [abcdef0, default threads]",
                         "(as shipped) [abcdef0, default threads], unpruned",
                         "(as shipped) [abcdef0, default threads], compare magnitude"]
    assert got["(as shipped) [abcdef0, 1 threads], unpruned"] == [(0, 0.45, 0.46, 1.0), (1, 0.45, 0.46, 1.0)]
    text = table(path)
    assert ("- (as shipped) [abcdef0, 1 threads], GDP minus (test, points): unpruned: -4.50 (twice the spread 1.41; "
            "by seed s0 -5.00, s1 -4.00: standard error 0.50); "
            "compare magnitude: +1.50 (twice the spread 1.41; by seed s0 +1.00, s1 +2.00: standard error 0.50)") in text
    assert "default threads], GDP minus" not in text  # one seed: no spread, no verdict


def test_the_paired_difference_matches_seeds_not_positions(tmp_path):
    path = tmp_path / "r.json"
    recs = [_record("", 1, 0.44, 0.4, {"polarization": 0.40}), _record("", 0, 0.40, 0.4, {"polarization": 0.41})]
    recs[1]["result"]["compare"]["polarization"]["acc_finetuned"] = 0.41
    path.write_text(json.dumps({"records": recs}))
    assert "by seed s0 -1.00, s1 +4.00: standard error 2.50" in table(path)


def test_widths_give_the_mean_units_removed_per_group_for_each_row_that_recorded_them(tmp_path):
    path = tmp_path / "r.json"
    recs = [_record("", 0, 0.40, 0.41, {"polarization": 0.39}), _record("", 1, 0.42, 0.43, {"polarization": 0.41}),
            _record("--regularizer l1", 0, 0.38, 0.37)]
    recs[0]["result"]["removed_by_group"] = {"0": 4, "2": 10}
    recs[1]["result"]["removed_by_group"] = {"0": 6}
    recs[0]["result"]["compare"]["polarization"]["removed_by_group"] = {"2": 3}
    path.write_text(json.dumps({"records": recs}))
    text = widths(path)
    assert "| run [commit] | seeds | g0 | g2 | total |" in text
    assert "| (as shipped) [abcdef0] | 2 | 5.0 | 5.0 | 10.0 |" in text
    assert "| (as shipped) [abcdef0], compare polarization | 1 | 0.0 | 3.0 | 3.0 |" in text
    assert "l1" not in text  # no record of it has the field


def test_pair_subtracts_rows_of_different_runs_by_seed_and_refuses_an_ambiguous_name(tmp_path):
    path = tmp_path / "r.json"
    recs = [_record("", 0, 0.40, 0.41, {"polarization": 0.42}), _record("", 1, 0.42, 0.43, {"polarization": 0.41}),
            _record("--set a=b", 1, 0.45, 0.44), _record("--set a=b", 0, 0.43, 0.40), _record("--set a=b", 2, 0.5, 0.5)]
    path.write_text(json.dumps({"records": recs}))
    text = pair(path, "a=b [abcdef0]", "compare polarization")
    assert text.splitlines() == [
        "--set a=b [abcdef0]  minus  (as shipped) [abcdef0], compare polarization:",
        "- test: +2.50 points over 2 seeds; by seed s0 +1.00, s1 +4.00: standard error 1.50",
        "- held-out: +0.50 points over 2 seeds; by seed s0 -2.00, s1 +3.00: standard error 2.50"]
    with pytest.raises(SystemExit, match="names 2 rows"):
        pair(path, "abcdef0]", "compare polarization")


def test_the_paired_table_lists_long_rows_of_the_same_threads_against_every_row_of_the_reference_run(tmp_path):
    path = tmp_path / "r.json"
    recs = []
    for seed in range(6):
        recs.append(_record("", seed, 0.40, 0.41, {"polarization": 0.42}))
        recs.append(_record("--set a=b", seed, 0.40 + (0.01 if seed % 2 else 0.03), 0.42))
        recs.append(_record("--set c=d", seed, 0.5, 0.5))
        recs[-1]["settings"]["threads"] = "default"  # another computation: never paired
    recs.append(_record("--set e=f", 0, 0.5, 0.5))  # too few seeds
    for r in recs[:-1]:
        r["settings"].setdefault("threads", "1")
    path.write_text(json.dumps({"records": recs}))
    lines = paired_table(path, "(as shipped) [abcdef0, 1 threads]").splitlines()
    assert lines[2] == "| run [commit] | seeds | minus GDP | minus compare polarization |"
    assert lines[4:] == ["| --set a=b [abcdef0, 1 threads] | 6 | +1.00 (0.00) / +2.00 (0.45) | "
                         "+0.00 (0.00) / +0.00 (0.45) |"]
