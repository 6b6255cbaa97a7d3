"""The fair campaign of the CIFAR methods benchmark (benchmarks/cifar_fair.py) on fake runs: the
splits never overlap, every method gets the same number of settings, the choice reads acc_val
only, and the campaign resumes from its records. No CIFAR, no training (run_one is replaced)."""

from __future__ import annotations

import argparse
import itertools
import json

import pytest

from benchmarks import cifar_fair, cifar_methods, records
from benchmarks.cifar_fair import GRID, SETTINGS_PER_METHOD, Job
from benchmarks.cifar_protocol import COMPETITORS, FAIR_PROTOCOL, split_ranges


def test_the_splits_are_consecutive_and_disjoint_and_the_second_held_out_one_is_12000_to_13999():
    ranges = split_ranges(FAIR_PROTOCOL["train_subset"], FAIR_PROTOCOL["val_subset"], FAIR_PROTOCOL["heldout2_subset"])
    assert ranges == {"train": range(0, 10000), "val": range(10000, 12000), "heldout2": range(12000, 14000)}
    for a, b in itertools.combinations(ranges.values(), 2):
        assert not set(a) & set(b)
    with pytest.raises(ValueError, match="positive size"):
        split_ranges(0, 10)


def test_every_method_gets_the_same_number_of_settings_and_every_knob_acts_on_its_method():
    assert set(GRID) == set(COMPETITORS)
    assert {len(settings) for settings in GRID.values()} == {SETTINGS_PER_METHOD}
    for method, settings in GRID.items():
        assert "default" in settings and settings["default"] == {}
        assert len({json.dumps(k, sort_keys=True) for k in settings.values()}) == SETTINGS_PER_METHOD  # no repeats
        for knobs in settings.values():
            for knob in knobs:
                assert method in cifar_fair.KNOBS[knob], (method, knob)
    assert len(cifar_fair.tune_jobs(list(GRID))) == SETTINGS_PER_METHOD * len(COMPETITORS)


def _args(tmp_path, **kw) -> argparse.Namespace:
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"weights")
    base = dict(command="tune", data="fake", methods=[*GRID, "unpruned"], targets=[0.5, 0.35], seeds=[0, 1, 2],
                shard=(0, 1), checkpoint=str(ckpt), results=tmp_path / "fair.json", gate_lr=None, bisect_probes=8,
                quick=False, dry_run=False, note=None, rerun=False)
    args = argparse.Namespace(**{**base, **kw})
    cifar_fair.prepare(args, need_checkpoint=True)
    return args


@pytest.fixture
def clean(monkeypatch):
    """A clean tree at a fixed commit (records.recorded matches only those)."""
    state = {"commit": "a" * 40, "dirty": False}
    monkeypatch.setattr(records, "git_state", lambda: dict(state))
    return state


@pytest.fixture
def fake_runs(monkeypatch):
    """run_one replaced: acc_val rises with the weights' lr, test and held-out 2 fall with it."""
    made: list[tuple] = []

    def run_one(args, method, target, seed):
        made.append((method, target, seed, args.lr, tuple(args.policy_set), args.normalize, args.tp_normalizer))
        if getattr(run_one, "fail_after", None) is not None and len(made) > run_one.fail_after:
            raise KeyboardInterrupt
        good = args.lr > 0.03
        return {"method": method, "target": target, "seed": seed, "flops_kept": target, "acc_val": 0.7 + 0.01 * good,
                "acc_finetuned": 0.7 - 0.05 * good, "acc_heldout2": 0.7 - 0.05 * good,
                **({"lambda_search": {"lambda": 0.3}} if method == "polarization_bisect" else {})}

    monkeypatch.setattr(cifar_methods, "run_one", run_one)
    return run_one, made


def test_the_choice_reads_acc_val_only_and_a_tie_goes_to_the_earlier_setting():
    runs = {"default": {"acc_val": 0.70, "acc_finetuned": 0.80, "acc_heldout2": 0.80},
            "lr-0.05": {"acc_val": 0.72, "acc_finetuned": 0.60, "acc_heldout2": 0.60},
            "other": {"acc_val": 0.72, "acc_finetuned": 0.90, "acc_heldout2": 0.90}}
    assert cifar_fair.choose(runs) == "lr-0.05"  # test and held-out 2 would pick another
    assert cifar_fair.choose({**runs, "missing": None}) is None


def test_tune_then_final_choose_on_acc_val_and_reuse_the_tuning_run(tmp_path, clean, fake_runs):
    run_one, made = fake_runs
    args = _args(tmp_path)
    assert cifar_fair.execute(args, cifar_fair.tune_jobs(args.methods), "tune") == 27
    chosen = cifar_fair.chosen_settings(args.methods, cifar_fair._lookup(args))
    assert {m: s for m, s in chosen.items() if m != "unpruned"} == {m: "lr-0.05" for m in GRID}
    made.clear()
    args.command = "final"
    cifar_fair.cmd_final(args)
    # 9 methods x 2 targets x 3 seeds, less the 9 tuning runs at (0.5, seed 0), and 3 unpruned
    assert len(made) == 9 * 5 + 3 and (("gdp", 0.5, 0) not in [m[:3] for m in made])
    assert all(m[3] == 0.05 for m in made if m[0] != "unpruned")
    text = cifar_fair.fair_tables(args.results, "final")
    assert "| 0.5 | gdp | lr-0.05 | 3 | 0.6500 ± 0.0000 |" in text and "(held-out 2)" in text and "(test)" in text
    assert "acc_val (training images 10,000-11,999)" in text and "is training images 12,000-13,999" in text
    assert "| gdp | lr-0.05 | 0.7100 | 0.5000 | yes |" in cifar_fair.fair_tables(args.results, "tune")


def test_an_interrupted_campaign_resumes_and_a_rerun_skips_what_is_recorded(tmp_path, clean, fake_runs):
    run_one, made = fake_runs
    args = _args(tmp_path, methods=["gdp", "l1"])
    run_one.fail_after = 4
    with pytest.raises(KeyboardInterrupt):
        cifar_fair.execute(args, cifar_fair.tune_jobs(args.methods), "tune")
    assert len(records.load_records(args.results)) == 4
    run_one.fail_after = None
    made.clear()
    assert cifar_fair.execute(args, cifar_fair.tune_jobs(args.methods), "tune") == 2
    assert cifar_fair.execute(args, cifar_fair.tune_jobs(args.methods), "tune") == 0
    clean["commit"] = "b" * 40  # another commit's records are neither skipped nor chosen from
    assert cifar_fair.chosen_settings(args.methods, cifar_fair._lookup(args))["gdp"] is None
    assert "tune: 6 runs, 0 recorded, 6 remain" in "\n".join(cifar_fair.plan_lines(args))


def test_final_refuses_until_tuning_is_done_and_a_dirty_tree_refuses_to_run(tmp_path, clean, fake_runs, capsys):
    args = _args(tmp_path, command="final", methods=["gdp"])
    with pytest.raises(cifar_fair.FairError, match="tuning of gdp is not finished"):
        cifar_fair.cmd_final(args)
    clean["dirty"] = True
    with pytest.raises(SystemExit) as stop:
        cifar_fair.dispatch(argparse.Namespace(**{**vars(args), "command": "tune", "checkpoint": args.checkpoint}))
    assert stop.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_polarization_bisect_search_is_made_once_per_setting_and_target(tmp_path, clean, fake_runs, monkeypatch):
    run_one, made = fake_runs
    seen = []
    real = run_one

    def spy(args, method, target, seed):
        seen.append(dict(args.bisections))
        return real(args, method, target, seed)

    monkeypatch.setattr(cifar_methods, "run_one", spy)
    args = _args(tmp_path, methods=["polarization_bisect"])
    jobs = [Job("polarization_bisect", "default", 0.35, s) for s in (0, 1, 2)]
    cifar_fair.execute(args, jobs, "final")
    assert seen == [{}, {0.35: {"lambda": 0.3}}, {0.35: {"lambda": 0.3}}]


def test_shards_split_whole_groups_and_cover_every_job():
    chosen = {m: "default" for m in GRID}
    jobs = cifar_fair.final_jobs(chosen, [0.5, 0.35], [0, 1, 2])
    shards = [cifar_fair.in_shard(jobs, (i, 3)) for i in range(3)]
    assert sorted(itertools.chain(*shards)) == sorted(jobs)
    for a, b in itertools.combinations(shards, 2):
        assert not {j[:3] for j in a} & {j[:3] for j in b}


def test_a_setting_becomes_the_run_arguments_and_its_policy_overrides_parse():
    base = argparse.Namespace(lr=0.02, finetune_lr=0.01, gate_lr=0.02, gdp_set=["x=1"])
    a = cifar_fair.run_args(base, "polarization", "fix_at-0.5")
    assert (a.lr, a.policy_set, a.gdp_set, a.normalize, a.tp_normalizer) == \
        (0.02, ["regularizer.fix_at=0.5"], [], True, "mean")
    assert cifar_methods._policy("polarization", 0.5, tuple(a.policy_set)).regularizer.fix_at == 0.5
    assert cifar_fair.run_args(base, "gdp", "lr-0.05").lr == 0.05
    assert cifar_fair.run_args(base, "magnitude", "normalize-off").normalize is False
    assert cifar_fair.run_args(base, "tp_bn_scale", "normalizer-off").tp_normalizer is None
    init = cifar_methods._policy("gdp", 0.5, tuple(cifar_fair.run_args(base, "gdp", "init-uniform").policy_set))
    assert init.regularizer.init == "uniform"


def test_the_plan_counts_the_whole_campaign_and_its_time(tmp_path, clean):
    args = _args(tmp_path, command="plan")
    text = "\n".join(cifar_fair.plan_lines(args))
    assert "tune: 27 runs, 0 recorded, 27 remain" in text
    assert "after tuning, 45 more" in text and "total remaining: ~7.2 CPU-hours" in text


def test_a_run_refuses_a_gdp_graph_imported_from_another_checkout(tmp_path, clean, monkeypatch, capsys):
    args = _args(tmp_path)
    monkeypatch.setattr(records, "ROOT", tmp_path / "elsewhere")
    with pytest.raises(SystemExit) as stop:
        cifar_fair.dispatch(args)
    assert stop.value.code == 2 and "not from this checkout" in capsys.readouterr().err


def test_the_commands_are_subcommands_of_cifar_methods(tmp_path, clean, capsys):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"weights")
    common = ["--checkpoint", str(ckpt), "--results", str(tmp_path / "r.json")]
    cifar_methods.main(["plan", *common, "--methods", "gdp", "l1"])
    assert "tune: 6 runs, 0 recorded, 6 remain" in capsys.readouterr().out
    cifar_methods.main(["pretrain", "--data", "unused: the checkpoint exists", "--checkpoint", str(ckpt)])
    assert records.sha256_file(ckpt) in capsys.readouterr().out
    cifar_methods.main(["tune", "--data", "d", "--dry-run", "--shard", "1/2", *common])
    assert "; shard 1/2" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        cifar_methods.main(["table", "--fair", "--results", str(tmp_path / "r.json")])
    assert stop.value.code == 2


def test_the_grid_table_has_a_row_of_every_method_with_its_settings(capsys):
    cifar_methods.main(["grid"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "setting 1" not in line]
    assert [r.split("|")[1].strip() for r in rows] == list(GRID)
    assert all(r.count(" | ") == SETTINGS_PER_METHOD for r in rows)


def _gate_run(method, target, seed, soft, hard_before, kept):
    """A gate method's result as run_one records it: per-step [step, soft, lambda] until the cut."""
    steps = [[i + 1, s, 1.0 + 0.1 * i] for i, s in enumerate(soft)]
    fix = {"step": len(soft), "hard_before": hard_before, "soft_before": soft[-1], "fraction": kept,
           "cut_units": 10 + seed, "kept_low": 0, "reopened": 0}
    return {"method": method, "target": target, "seed": seed, "flops_kept": kept, "acc_val": 0.7,
            "acc_finetuned": 0.7, "acc_heldout2": 0.7, "steps": steps, "fix": fix}


def test_the_cut_table_reads_the_gates_trajectory_and_how_far_the_cut_moved_them(tmp_path, clean, monkeypatch, capsys):
    def run_one(args, method, target, seed):
        if method not in ("gdp", "polarization"):
            return {"method": method, "target": target, "seed": seed, "flops_kept": target, "acc_val": 0.7,
                    "acc_finetuned": 0.7, "acc_heldout2": 0.7}
        # gdp stops 0.1 above the target and the cut decides; polarization reaches it
        soft = [1.0, 0.8, target + 0.1, target + 0.1] if method == "gdp" else [1.0, 0.9, 0.7, target]
        return _gate_run(method, target, seed, soft, soft[-1], target)

    monkeypatch.setattr(cifar_methods, "run_one", run_one)
    args = _args(tmp_path, methods=["gdp", "polarization", "magnitude"])
    cifar_fair.execute(args, cifar_fair.tune_jobs(args.methods), "tune")
    args.command = "final"
    cifar_fair.cmd_final(args)
    text = cifar_fair.fair_tables(args.results, "cut")
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in text.splitlines() if line.startswith("| 0.")}
    assert set(rows) == {("0.5", "gdp"), ("0.5", "polarization"), ("0.35", "gdp"), ("0.35", "polarization")}
    gdp = [c.strip() for c in rows[("0.5", "gdp")].split("|")[1:-1]]
    header = [c.strip() for c in text.splitlines()[2].split("|")[1:-1]]
    cell = dict(zip(header, gdp))
    assert len(gdp) == len(header) == text.splitlines()[3].count("|") - 1
    assert cell["seeds"] == "3" and cell["cut at step"] == "4"
    assert cell["soft at 0.25"] == "1.0000 ± 0.0000" and cell["soft at 0.5"] == "0.8000 ± 0.0000"
    assert cell["soft before cut"] == "0.6000 ± 0.0000" and cell["cut moved"] == "0.1000 ± 0.0000"
    assert cell["units cut"] == "11.0 ± 1.0" and cell["lambda at cut"] == "1.3000 ± 0.0000"
    assert dict(zip(header, [c.strip() for c in rows[("0.35", "polarization")].split("|")[1:-1]]))["cut moved"] \
        == "0.0000 ± 0.0000"
    figure = tmp_path / "cut.png"
    capsys.readouterr()
    cifar_methods.main(["table", "--fair", "--stage", "cut", "--results", str(args.results), "--figure", str(figure)])
    assert capsys.readouterr().out.startswith("Gate trajectories") and figure.read_bytes()[:4] == b"\x89PNG"
