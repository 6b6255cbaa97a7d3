"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every test runs torch on one thread: the models here are tiny, and on the 2-core CI
    machines one thread is much faster (and deterministic) than several fighting over cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def zoo_analysis():
    """``zoo_analysis(name)`` -> ``(model, inputs, analysis)`` of a zoo model, analysed once."""
    import gdp_graph as G
    from tests.zoo import ZOO

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model, inputs = ZOO[name]()
            cache[name] = (model, inputs, G.analyze(model, inputs))
        return cache[name]

    return get
