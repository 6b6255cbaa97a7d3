"""Copies of models made by gdp-graph print none of torch's own deprecation noise: a graph from
``torch.export`` keeps pytree specs whose deep copy warns about ``LeafSpec`` in torch 2.13."""

import copy
import warnings

import pytest
import torch
from torch import nn

import gdp_graph as G
from gdp_graph.graph.model_copy import deepcopy_model


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x):
        return {"y": self.b(torch.relu(self.a(x)))}


def _leafspec_warnings(caught) -> list:
    return [w for w in caught if "LeafSpec" in str(w.message)]


def test_an_exported_graph_copies_without_the_leafspec_warning_and_copies_exactly():
    gm = torch.export.export(_DictOut().eval(), (torch.randn(2, 4),)).module()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = copy.deepcopy(gm)
    if not _leafspec_warnings(caught):
        pytest.skip("this torch copies export specs without the deprecation warning")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = deepcopy_model(gm)
    assert not _leafspec_warnings(caught)
    x = torch.randn(2, 4)  # the exported graph's batch size
    assert torch.equal(ours(x)["y"], plain(x)["y"])
    assert all(p is not q for p, q in zip(ours.parameters(), gm.parameters()))


def test_gating_and_finalizing_a_decoder_prints_no_leafspec_warning():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gated = G.attach(model, "llm", example_inputs=(ids,), total_steps=4)
        G.finalize(gated)
    assert not _leafspec_warnings(caught), [str(w.message) for w in caught]
