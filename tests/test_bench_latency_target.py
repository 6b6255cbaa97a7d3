"""benchmarks/latency_target.py on a small zoo model: one record per target, written through
benchmarks/records.py, with the table's build time, the predicted and measured ratios and the
FLOPs-targeted plan beside them (no timing is asserted)."""

from __future__ import annotations

from benchmarks import latency_target, records


def test_latency_target_writes_one_record_per_target(tmp_path):
    out = tmp_path / "latency_target.json"
    latency_target.main(["--models", "zoo:mobilenetv2", "--targets", "0.9,0.8", "--rounds", "2", "--repeat", "1",
                         "--points", "2", "--corrections", "1", "--cache", str(tmp_path / "tables"), "--out", str(out)])
    recs = records.load_records(out)
    assert [r["settings"]["target"] for r in recs] == [0.9, 0.8]
    for r in recs:
        res = r["result"]
        assert r["benchmark"] == "latency_target" and r["commit"] and r["machine"]
        assert res["table_build_s"] > 0 and res["predicted"] > 0
        assert len(res["measured"]["rounds"]) == 2 and res["measured"]["ratio"] > 0
        assert res["pruned_class"] != "GraphModule"
        # analysis timed over repeats, so that a reproduction compares it within their spread
        runs = res["analysis"]["runs"]
        assert len(runs) == latency_target.ANALYSIS_REPEATS and res["analysis"]["median_s"] == sorted(runs)[2]
        flops = res["flops_plan"]
        assert 0 < flops["flops_target"] <= 1 and flops["params"] > 0 and flops["flops"] > 0
        assert flops["predicted"] > 0  # its latency as the table predicts it (measured, so not compared)
        loop = res["loop"]  # the closed loop's rounds: the chosen plan is the one saved and timed
        assert 1 <= len(loop["rounds"]) <= 2 and loop["rounds"][0]["aim"] == r["settings"]["target"]
        assert loop["predicted"] == res["predicted"] and r["settings"]["corrections"] == 1
    rows = latency_target.table(out).splitlines()
    assert len(rows) == 6 and rows[2].startswith("| zoo:mobilenetv2 | 1 | 0.9 | ") and "→" in rows[2]
    assert rows[5].startswith("Within ±0.05 of the target: ") and " of 2 on the wall clock" in rows[5]
