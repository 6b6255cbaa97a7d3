"""``gdp-graph explain``: coupling paths read from the analysis' networkx graph, op by op, and
the op that froze a frozen group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gdp_graph as G
from gdp_graph.report.explain import ExplainError, coupling_path, explain_group

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def resnet():
    from tests.zoo.resnets import resnet_basic
    return G.analyze(resnet_basic().eval(), torch.randn(1, 3, 16, 16))


def test_residual_coupling_goes_through_the_add(resnet):
    steps = coupling_path(resnet, 0, "conv1", "layer1.0.conv2")
    targets = [s.target for s in steps]
    assert targets[0] == "conv1" and targets[-1] == "layer1.0.conv2"
    assert any("add" in t for t in targets)  # the residual add is what ties the two producers
    assert [s.direction for s in steps][0] == "" and "←" in [s.direction for s in steps]
    assert steps[0].role == "produce" and steps[-1].role == "produce"


def test_path_is_read_from_the_analysis_graph(resnet, monkeypatch):
    # cut every data edge out of the networkx graph: no path is left to explain the coupling
    graph = resnet.graph.copy()
    graph.remove_edges_from([(u, v, k) for u, v, k, kind in graph.edges(keys=True, data="kind") if kind == "data"])
    monkeypatch.setattr(resnet, "graph", graph)
    with pytest.raises(ExplainError, match="not connected"):
        coupling_path(resnet, 0, "conv1", "layer1.0.conv2")


def test_unrelated_member_and_missing_group_are_named(resnet):
    with pytest.raises(ExplainError, match="does not carry group 0"):
        coupling_path(resnet, 0, "conv1", "layer3.1.conv2")
    with pytest.raises(ExplainError, match="group 99 does not exist"):
        explain_group(resnet, 99)


def test_frozen_group_names_the_op_that_froze_it(resnet):
    frozen = next(g.id for g in resnet.groups if g.fully_frozen)
    data = explain_group(resnet, frozen)
    origin = data["frozen"][0]
    assert origin["node"] == "output" and "reaches the model output" in origin["reason"]
    assert origin["path"][0]["target"] == "fc" and origin["path"][-1]["node"] == "output"


def test_explain_command_on_an_opaque_leaf():
    done = subprocess.run([sys.executable, "-m", "gdp_graph.cli.main", "explain", "tests.fixtures.cli_models:untraceable",
                           "0", "--json"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    origin = data["frozen"][0]
    assert "opaque module 'gate_block'" in origin["reason"] and origin["target"] == "gate_block"
    assert origin["path"][-1]["role"] == "freezes the group here"
