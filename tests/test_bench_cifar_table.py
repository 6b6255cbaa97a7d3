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


def test_the_second_held_out_split_is_a_column_only_when_every_run_has_it() -> None:
    runs = [dict(_run("gdp", 0.5, s, 0.7, 0.5), acc_heldout2=0.69 + 0.01 * s) for s in range(2)]
    text = table({"runs": runs})
    assert text.splitlines()[0].endswith("| acc held-out 2 |") and "| 0.6950 ± 0.0071 |" in text
    assert "held-out 2" not in table({"runs": [*runs, _run("l1", 0.5, 0, 0.6, 0.5)]})


def test_baselines_get_the_shared_schedule_but_not_the_gdp_gate_settings() -> None:
    from benchmarks.cifar_methods import _policy

    gdp = _policy("gdp", 0.5).to_dict()["regularizer"]
    assert gdp["reopen"] is True and "epsilon" in gdp  # the shipped cifar_resnet policy
    for method in ("polarization", "l1"):
        reg = _policy(method, 0.35).to_dict()["regularizer"]
        assert reg["name"] == method and reg["fix_at"] == gdp["fix_at"]
        assert not reg.get("reopen") and "epsilon" not in reg


def test_the_unpruned_reference_is_tabled_but_never_the_best_other_method() -> None:
    runs = [_run("gdp", 0.5, s, a, 0.5) for s, a in enumerate((0.700, 0.701, 0.702))]
    runs += [_run("magnitude", 0.5, s, a, 0.5) for s, a in enumerate((0.690, 0.691, 0.692))]
    runs += [_run("unpruned", 1.0, s, a, 1.0) for s, a in enumerate((0.750, 0.751, 0.752))]
    text = table({"runs": runs})
    assert "| 1 | unpruned | 3 |" in text
    (line,) = verdicts(runs)
    assert "best other (magnitude)" in line and "GDP wins" in line


def test_controller_steps_are_the_per_iteration_trajectory_until_the_cut() -> None:
    import torch

    from benchmarks.cifar_methods import controller_steps
    from gdp_graph.gates.attach import attach
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet

    gated = attach(cifar_resnet(8), policy="cifar_resnet", example_inputs=torch.randn(2, 3, 32, 32), total_steps=10)
    for _ in range(10):
        gated.step()
    rows = controller_steps(gated)
    assert [r[0] for r in rows] == list(range(1, gated.fix_report["step"] + 1))
    assert all(len(r) == 3 and r[2] > 0 for r in rows)


def test_the_lambda_bisection_brackets_a_monotone_response_and_stops_in_the_band() -> None:
    import argparse
    import math

    from benchmarks.cifar_methods import bisect_lambda

    seen = []

    def kept(lam: float) -> float:  # more lambda keeps less; 0.5 is kept at lambda 2.0
        seen.append(lam)
        return 1.0 / (1.0 + (lam / 2.0) ** 1.5)

    search = bisect_lambda(argparse.Namespace(bisect_probes=12), 0.5, probe=kept)
    assert abs(search["kept"] - 0.5) <= 0.01 and len(search["probes"]) == len(seen) < 12
    assert abs(math.log10(search["lambda"]) - math.log10(2.0)) < 0.1
    capped = bisect_lambda(argparse.Namespace(bisect_probes=2), 0.5, probe=kept)
    assert len(capped["probes"]) == 2 and capped["kept"] == min((p["kept"] for p in capped["probes"]),
                                                                 key=lambda k: abs(k - 0.5))


def test_constant_lambda_holds_the_controller_at_that_value() -> None:
    import torch

    from benchmarks.cifar_methods import _policy, constant_lambda
    from gdp_graph.gates.attach import attach
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet

    policy = constant_lambda(_policy("polarization", 0.5), 0.3)
    gated = attach(cifar_resnet(8), policy=policy, example_inputs=torch.randn(2, 3, 32, 32), total_steps=10)
    for _ in range(5):
        gated.step()
    assert gated.lam == 0.3 and gated.policy.regularizer.name == "polarization"


def test_table_reads_the_runs_written_as_records_beside_the_older_ones() -> None:
    results = {"runs": [_run("gdp", 0.5, 0, 0.7, 0.5)],
               "records": [{"benchmark": "cifar_methods", "result": _run("taylor", 0.5, 0, 0.65, 0.5)},
                           {"benchmark": "another_benchmark", "result": _run("l1", 0.5, 0, 0.6, 0.5)}]}
    rows = [line for line in table(results).splitlines() if line.startswith("| 0.")]
    assert [r.split("|")[2].strip() for r in rows] == ["gdp", "taylor"]
