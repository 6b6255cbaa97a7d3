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
    assert [r.split("|")[3].strip() for r in rows] == ["0.8", "0.5"]
    assert all(r.split("|")[9].strip() in ("yes", "no") for r in rows)
