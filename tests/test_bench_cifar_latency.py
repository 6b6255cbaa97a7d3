"""benchmarks/cifar_latency.py in its quick mode on a tiny made-up CIFAR-10 archive: a pretrained
checkpoint, the FLOPs calibration to the nominal target, the FLOPs-targeted GDP run and the
latency-targeted one aimed at what it measured, each one record with its commit; the table pairs them. Timings are real
(a tiny model) but never asserted: only that they are ratios and recorded."""

from __future__ import annotations

import torch

from benchmarks import cifar_latency, records
from tests.fixtures.cifar10_synthetic import Synthetic


def test_quick_mode_records_both_runs_and_the_calibration(tmp_path, monkeypatch):
    from gdp_graph.recipes.cifar10.data import cifar10
    real = cifar10.cifar10_loaders
    # the made-up archive has 20 training images: batches of 4 instead of the protocol's 128
    monkeypatch.setattr(cifar10, "cifar10_loaders", lambda data, batch_size, **kw: real(data, batch_size=4, **kw))
    data = Synthetic(tmp_path / "data")
    out = tmp_path / "cifar_latency.json"
    cifar_latency.main(["run", "--data", str(data.archive), "--quick", "--train-subset", "8", "--val-subset", "4",
                        "--heldout2-subset", "0", "--targets", "0.7", "--seeds", "0", "--width", "0.25",
                        "--rounds", "2", "--repeat", "1", "--calibration-rounds", "1", "--latency-batch", "2",
                        "--checkpoint", str(tmp_path / "ck.pt"), "--latency-cache", str(tmp_path / "tables"),
                        "--results", str(out)])
    recs = records.load_records(out)
    assert [r["settings"]["run"] for r in recs] == ["gdp_flops", "gdp_latency"]
    for r in recs:
        res = r["result"]
        assert r["commit"] and r["settings"]["quick"] and res["quick"] and r["checkpoints"]
        assert res["latency"]["ratio"] > 0 and len(res["latency"]["iqr"]) == 2
        assert 0 < res["flops_kept"] <= 1 and 0 <= res["acc_finetuned"] <= 1 and res["trajectory"]
    flops, lat = (r["result"] for r in recs)
    cal = flops["calibration"]  # the FLOPs budget whose one-shot plans measure the nominal target
    assert flops["metric"] == "flops" and flops["fraction"] == cal["flops_target"] and cal["target"] == 0.7
    assert 1 <= len(cal["rounds"]) <= 2 and cal["rounds"][0]["aim"] == 0.7
    # the latency run aims at what the FLOPs run measured: the pair at the same measured latency
    assert lat["metric"] == "latency" and lat["fraction"] == lat["flops_run_ratio"] == flops["latency"]["ratio"]
    assert recs[0]["settings"]["latency_batch"] == 2
    assert "no records" == cifar_latency.table(out)  # quick runs stay out of the table
    text = cifar_latency.table(out, include_quick=True)
    rows = text.splitlines()
    assert rows[4].startswith("| 0.7 | gdp_flops | 1 | flops ")
    assert rows[5].startswith(f"| 0.7 | gdp_latency | 1 | latency {lat['fraction']:.3f} |")
    difference = 100 * (lat["acc_finetuned"] - flops["acc_finetuned"])
    assert f"s0 {difference:+.2f} (" in text and "Criterion (gdp_latency's mean at least gdp_flops'): " in text

def test_the_network_is_mobilenetv2_at_cifar_strides():
    net = cifar_latency.CifarMobileNetV2(0.5).eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and net.features[0][0].stride == (1, 1)
