"""benchmarks/latency_repeat.py on a small zoo model: one record with every measurement of every
plan, in the order taken, and a table row per plan (no timing is asserted)."""

from __future__ import annotations

from benchmarks import latency_repeat, records


def test_latency_repeat_records_every_measurement_and_tables_each_plan(tmp_path, capsys):
    out = tmp_path / "latency_repeat.json"
    latency_repeat.main(["--model", "zoo:mobilenetv2", "--fractions", "0.8", "0.5", "--measurements", "2",
                         "--batch", "1", "--rounds", "2", "--repeat", "1", "--results", str(out)])
    (rec,) = records.load_records(out)
    assert rec["benchmark"] == "latency_repeat" and rec["commit"] and rec["machine"]["cpu"]
    assert rec["settings"]["fractions"] == [0.8, 0.5] and set(rec["result"]["measurements"]) == {"0.8", "0.5"}
    for taken in rec["result"]["measurements"].values():
        assert len(taken) == 2 and all(m["q1"] <= m["ratio"] <= m["q3"] and m["ratio"] > 0 for m in taken)
    capsys.readouterr()
    latency_repeat.main(["--table", "--results", str(out)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| zoo:mobilenetv2")]
    assert [r.split("|")[5].strip() for r in rows] == ["0.8", "0.5"]
    assert all(r.split("|")[3:5] == [" 0 ", " default "] for r in rows)
    assert all(r.split("|")[12].strip() in ("yes", "no") for r in rows)
    assert "train_between" not in rec["settings"]  # the settings of the records made before the flag


def test_training_a_copy_between_measurements_is_recorded_and_leaves_the_model_alone(tmp_path, capsys):
    import torch
    out = tmp_path / "latency_repeat.json"
    latency_repeat.main(["--model", "zoo:mobilenetv2", "--fractions", "0.5", "--measurements", "2", "--batch", "1",
                         "--rounds", "2", "--repeat", "1", "--train-between", "2", "--train-batch", "4",
                         "--results", str(out)])
    assert "trained a copy for 2 steps at batch 4" in capsys.readouterr().out
    (rec,) = records.load_records(out)
    assert rec["settings"]["train_between"] == 2 and rec["settings"]["malloc"] == "default"
    model, inputs = latency_repeat._model("zoo:mobilenetv2")
    before = model(*inputs)
    latency_repeat._train_a_copy(model, inputs, 2, 4)
    assert torch.equal(model(*inputs), before) and not model.training


def test_pinned_malloc_reruns_the_script_with_glibcs_thresholds_set(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path / "latency_repeat.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    subprocess.run([sys.executable, "benchmarks/latency_repeat.py", "--model", "zoo:mobilenetv2", "--fractions", "0.5",
                    "--measurements", "1", "--batch", "1", "--rounds", "2", "--repeat", "1", "--malloc", "pinned",
                    "--results", str(out)], cwd=Path(latency_repeat.__file__).parents[1], env=env, check=True,
                   capture_output=True)
    (rec,) = records.load_records(out)
    assert rec["settings"]["malloc"] == "pinned" and rec["result"]["malloc_env"] == latency_repeat.PINNED
    assert "--malloc pinned" in rec["command"]
