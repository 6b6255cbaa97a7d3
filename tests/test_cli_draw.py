"""``gdp-graph inspect --draw``: the channel groups drawn on the model graph."""

from __future__ import annotations

import importlib.util

import pytest

from gdp_graph.cli.main import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the 'plot' extra is not installed")


def test_draw_svg_names_every_group(tmp_path, capsys):
    target = tmp_path / "groups.svg"
    code = main(["inspect", "tests.zoo.resnets:resnet_basic", "--input-shape", "1,3,16,16", "--draw", str(target)])
    out, _ = capsys.readouterr()
    assert code == 0 and f"written to {target}" in out
    svg = target.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for gid in range(10):  # the legend names every group of this model
        assert f"group {gid} (" in svg
    assert "layer2.0.downsample.0" in svg  # nodes are labelled with their modules


def test_draw_png(tmp_path, capsys):
    target = tmp_path / "groups.png"
    assert main(["inspect", "tests.fixtures.cli_models:small_cnn", "--draw", str(target), "--json"]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_refuses_other_suffixes(tmp_path, capsys):
    assert main(["inspect", "tests.fixtures.cli_models:small_cnn", "--draw", str(tmp_path / "g.jpg")]) == 2
    assert ".svg or .png" in capsys.readouterr().err
