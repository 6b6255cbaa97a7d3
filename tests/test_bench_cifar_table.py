"""The CIFAR methods benchmark's table and its verdicts (synthetic records: no training)."""

from benchmarks.cifar_methods import table, verdicts


def _run(method: str, target: float, seed: int, acc: float, flops: float) -> dict:
    return {"method": method, "target": target, "seed": seed, "acc_finalized": acc - 0.01, "acc_finetuned": acc,
            "flops_kept": flops, "params_kept": 0.5, "acc_val": acc}


def test_a_gap_beyond_twice_the_spread_is_called_and_one_inside_is_not() -> None:
    runs = [_run("gdp", 0.5, s, a, 0.5) for s, a in enumerate((0.720, 0.721, 0.722))]
    runs += [_run("magnitude", 0.5, s, a, 0.501) for s, a in enumerate((0.700, 0.701, 0.702))]
    runs += [_run("gdp", 0.35, s, a, 0.35) for s, a in enumerate((0.690, 0.700, 0.710))]
    runs += [_run("magnitude", 0.35, s, a, 0.37) for s, a in enumerate((0.695, 0.705, 0.715))]
    lines = verdicts(runs)
    assert "GDP wins" in lines[0] and "+2.00 points" in lines[0] and lines[0].endswith("yes")
    assert "not real" in lines[1] and lines[1].endswith("no")  # 0.37 is 0.02 off the target


def test_table_has_one_row_per_target_and_method_and_skips_quick_runs() -> None:
    runs = [_run("gdp", 0.5, 0, 0.7, 0.5), _run("l1", 0.5, 0, 0.6, 0.5), dict(_run("gdp", 0.35, 0, 0.6, 0.35), quick=True)]
    text = table({"runs": runs})
    rows = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert [r.split("|")[2].strip() for r in rows] == ["gdp", "l1"]
    assert "no call (a single seed)" in text


def test_baselines_get_the_shared_schedule_but_not_the_gdp_gate_settings() -> None:
    from benchmarks.cifar_methods import _policy

    gdp = _policy("gdp", 0.5).to_dict()["regularizer"]
    assert gdp["reopen"] is True and "epsilon" in gdp  # the shipped cifar_resnet policy
    for method in ("polarization", "l1"):
        reg = _policy(method, 0.35).to_dict()["regularizer"]
        assert reg["name"] == method and reg["fix_at"] == gdp["fix_at"]
        assert not reg.get("reopen") and "epsilon" not in reg
