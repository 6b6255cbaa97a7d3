"""benchmarks/cifar_latency.py in its quick mode on a tiny made-up CIFAR-10 archive: a pretrained
checkpoint, the latency-targeted GDP run, the FLOPs calibration to its measured latency and the
FLOPs-targeted run, each one record with its commit; the table reads them. Timings are real
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
    assert [r["settings"]["run"] for r in recs] == ["gdp_latency", "gdp_flops"]
    for r in recs:
        res = r["result"]
        assert r["commit"] and r["settings"]["quick"] and res["quick"] and r["checkpoints"]
        assert res["latency"]["ratio"] > 0 and len(res["latency"]["iqr"]) == 2
        assert 0 < res["flops_kept"] <= 1 and 0 <= res["acc_finetuned"] <= 1 and res["trajectory"]
    lat, flops = (r["result"] for r in recs)
    assert lat["metric"] == "latency" and lat["fraction"] == 0.7
    cal = flops["calibration"]  # the FLOPs budget found for the latency run's measured ratio
    assert flops["metric"] == "flops" and flops["fraction"] == cal["flops_target"]
    assert flops["latency_run_ratio"] == lat["latency"]["ratio"] == cal["target"]
    assert 1 <= len(cal["rounds"]) <= 2 and cal["rounds"][0]["aim"] == cal["target"]
    assert recs[0]["settings"]["latency_batch"] == 2
    assert "no records" == cifar_latency.table(out)  # quick runs stay out of the table
    rows = cifar_latency.table(out, include_quick=True).splitlines()
    assert rows[4].startswith("| 0.7 | gdp_latency | 1 | latency 0.700 |")
    assert rows[5].startswith("| 0.7 | gdp_flops | 1 | flops ")


def test_the_network_is_mobilenetv2_at_cifar_strides():
    net = cifar_latency.CifarMobileNetV2(0.5).eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and net.features[0][0].stride == (1, 1)
