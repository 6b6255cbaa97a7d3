"""Models as people call them: example inputs as a tensor, a tuple or a dict of keyword
arguments; outputs that are tuples, dicts, dataclasses or ``ModelOutput``s; and a verify that
refuses to call a degenerate comparison exact."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
import torch
from torch import nn

import gdp_graph as G
from gdp_graph.prune.verify import compare_outputs


@dataclasses.dataclass
class TaggerOutput:
    logits: torch.Tensor
    hidden: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None


class Tagger(nn.Module):
    """A token tagger called like a Hugging Face model: ``model(input_ids=..., mask=...)``,
    with a branch on ``labels`` that only tracing with ``labels=None`` fixed can pass."""

    def __init__(self, vocab: int = 11, width: int = 8, hidden: int = 12, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.head = nn.Linear(width, classes)

    def forward(self, input_ids, mask=None, labels=None, return_dict=True):
        h = self.embed(input_ids)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        if mask is not None:
            h = h * mask.unsqueeze(-1)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        if not return_dict:
            return (logits, h)
        return TaggerOutput(logits=logits, hidden=h, loss=loss)


def _ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 11, (2, 5), generator=g)


def _mlp_group(analysis):
    return next(g for g in analysis.groups if "fc1" in g.modules and "embed" not in g.modules)


@pytest.mark.parametrize("inputs", [
    lambda ids: {"input_ids": ids, "mask": torch.ones(2, 5)},
    lambda ids: {"input_ids": ids},
    lambda ids: (ids,),
    lambda ids: ids,
], ids=["kwargs", "kwargs-partial", "tuple", "tensor"])
def test_inputs_as_tensor_tuple_or_keywords(inputs):
    model = Tagger()
    analysis = G.analyze(model, inputs(_ids()))
    assert analysis.traced.front_end == "fx"
    mlp = _mlp_group(analysis)
    assert mlp.prunable and mlp.exact
    stream = next(g for g in analysis.groups if "embed" in g.modules)
    # the hidden stream is returned in the dataclass: it must be frozen, not pruned
    assert stream.fully_frozen and "reaches the model output" in stream.describe_frozen()
    plan = G.PruningPlan(keep={mlp.id: (0, 3, 4, 9)})
    pruned = G.rewrite(analysis, plan)
    result = G.verify(analysis, plan, pruned)
    assert result.ok and result.max_rel_diff < 1e-6, result
    out = pruned(*analysis.traced.example_inputs)
    assert isinstance(out, TaggerOutput) and out.logits.shape == (2, 5, 3)


def test_tuple_output_through_keyword_flag():
    analysis = G.analyze(Tagger(), {"input_ids": _ids(), "return_dict": False})
    stream = next(g for g in analysis.groups if "embed" in g.modules)
    assert stream.fully_frozen
    plan = G.random_plan(analysis, 0.5, seed=0)
    assert plan.keep and G.verify(analysis, plan, G.rewrite(analysis, plan)).ok


def test_keyword_inputs_that_do_not_fit_are_one_clear_error():
    with pytest.raises(G.TraceError, match="do not fit Tagger.forward"):
        G.analyze(Tagger(), {"input_ids": _ids(), "attention": torch.ones(2, 5)})
    with pytest.raises(G.TraceError, match="must be a tensor, a tuple"):
        G.analyze(Tagger(), 3)


def test_model_output_fields_are_frozen_and_compared():
    transformers = pytest.importorskip("transformers")

    @dataclasses.dataclass
    class Out(transformers.utils.ModelOutput):
        logits: Optional[torch.Tensor] = None
        hidden_states: Optional[torch.Tensor] = None

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.b(torch.relu(self.a(x)))
            return Out(logits=self.c(h), hidden_states=h)

    analysis = G.analyze(Net(), torch.randn(3, 4))
    hidden = next(g for g in analysis.groups if "c" in g.modules and "a" not in g.modules)
    assert hidden.fully_frozen
    inner = next(g for g in analysis.groups if "a" in g.modules and "c" not in g.modules)
    plan = G.PruningPlan(keep={inner.id: (1, 2, 5)})
    pruned = G.rewrite(analysis, plan)
    assert G.verify(analysis, plan, pruned).ok
    assert isinstance(pruned(torch.randn(3, 4)), Out)


def test_verify_refuses_all_zero_or_constant_reference():
    zero = {"logits": torch.zeros(2, 3)}
    result = compare_outputs(zero, {"logits": torch.zeros(2, 3)}, 1e-4)
    assert not result.ok and "all zeros" in result.inconclusive and "NOT VERIFIED" in str(result)
    const = TaggerOutput(logits=torch.full((2, 3), 0.5), hidden=torch.full((2, 4), 0.5))
    result = compare_outputs(const, const, 1e-4)
    assert not result.ok and "constant" in result.inconclusive
    varying = (torch.arange(6.0).reshape(2, 3),)
    assert compare_outputs(varying, varying, 1e-4).ok


def test_verify_has_no_absolute_floor_for_tiny_outputs():
    ref = torch.tensor([1e-12, 2e-12, 3e-12])
    assert not compare_outputs(ref, ref * 2, 1e-4).ok  # 100% off, though |diff| is 3e-12
    assert compare_outputs(ref, ref.clone(), 1e-4).ok


def test_zero_initialized_head_is_not_verified():
    class ZeroHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
            nn.init.zeros_(self.b.weight)
            nn.init.zeros_(self.b.bias)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    analysis = G.analyze(ZeroHead(), torch.randn(3, 4))
    group = next(g for g in analysis.groups if "a" in g.modules)
    plan = G.PruningPlan(keep={group.id: (0, 1)})
    pruned = G.rewrite(analysis, plan, check=False)
    result = G.verify(analysis, plan, pruned)
    assert not result.ok and result.inconclusive
