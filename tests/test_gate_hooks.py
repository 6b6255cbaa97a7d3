"""A gated decoder keeps the user's class (gates as forward pre-hooks on the consuming modules,
``gates.hooks``) and trains like the model it came from: any batch size and sequence length,
``labels=``, ``generate``, HF ``Trainer`` with gradient checkpointing; finalize gives the exact
pruned model. A torch.fx graph keeps its gates in the graph."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import gdp_graph as G
from gdp_graph.gates.hooks import hooked_model
from gdp_graph.graph.inject import FixedScales, insert_site_multipliers

T = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

POLICY = {"version": 1, "target": {"metric": "params", "fraction": 0.6},
          "regularizer": {"name": "gdp", "lambda": 1.0,
                          "epsilon": {"start": 1e-2, "end": 1e-8, "schedule": "cosine", "step": "iteration"}},
          "defaults": {"level": "channel", "block_level": "block"}}


def ids(shape, seed=0):
    return torch.randint(1, 64, shape, generator=torch.Generator().manual_seed(seed))


def llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return T.LlamaForCausalLM(cfg).eval()


def attached(model, steps=6):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return G.attach(model, POLICY, example_inputs={"input_ids": ids((1, 8))}, total_steps=steps)


def test_gated_decoder_keeps_its_class_and_trains_on_any_batch_and_length():
    model = llama()
    gated = attached(model)
    assert type(gated.module) is T.LlamaForCausalLM and gated.hooks_reason == ""
    assert any(isinstance(m, T.models.llama.modeling_llama.LlamaDecoderLayer) for m in gated.modules())
    assert gated.config.num_hidden_layers == 2  # the class's attributes through the gated model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = [p for n, p in gated.named_parameters() if "gdp_gates" not in n]
    opt, gate_opt = torch.optim.AdamW(weights, lr=1e-3), gated.gate_optimizer()
    gated.train()
    for i, shape in enumerate([(2, 16), (3, 5), (1, 9), (4, 3), (2, 12), (2, 7)]):
        x = ids(shape, i)
        loss = gated(input_ids=x, labels=x).loss + gated.penalty()
        loss.backward()
        assert all(p.grad is not None for p in gated.gate_parameters())
        opt.step(), gate_opt.step(), opt.zero_grad(), gate_opt.zero_grad(), gated.step()
        assert torch.isfinite(loss)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model untouched
    pruned, report = G.finalize(gated)
    assert report.check.ok
    with torch.no_grad():
        gated.eval()
        traced = gated.analysis.traced  # the pruned graph takes the example inputs flattened
        assert torch.allclose(pruned(*traced.example_inputs).logits, gated(**traced.inputs.kwargs).logits, atol=1e-5)
        # the gated class generates, with and without its KV cache, at any length
        kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(gated.generate(ids((2, 5)), use_cache=True, **kw),
                           gated.generate(ids((2, 5)), use_cache=False, **kw))


def test_hooks_compute_what_the_gated_graph_computes():
    gated = attached(llama())
    a, sites = gated.analysis, gated.bank.sites
    g = torch.Generator().manual_seed(1)
    scales = [torch.rand(s.shape if -1 not in s.shape else (s.size,), generator=g).reshape(s.shape) for s in sites]
    graph = insert_site_multipliers(a, FixedScales(scales), sites, "p")
    hooked, why = hooked_model(a, FixedScales(scales), sites, "p")
    assert why == ""
    with torch.no_grad():
        expected = graph.eval()(*a.traced.example_inputs).logits
        actual = hooked.eval()(**a.traced.inputs.kwargs).logits
        copied = copy.deepcopy(hooked)(**a.traced.inputs.kwargs).logits  # the hooks follow a copy
    assert torch.allclose(expected, actual, atol=1e-6) and torch.equal(actual, copied)
    assert not torch.allclose(expected, a.traced.module(**a.traced.inputs.kwargs).logits, atol=1e-3)


def test_trainer_with_gradient_checkpointing_trains_the_gated_class(tmp_path):
    from gdp_graph.integrations.hf import GdpTrainerCallback

    gated = attached(llama(), steps=3)
    data = [{"input_ids": ids((n,), n), "labels": ids((n,), n)} for n in (5, 9, 7, 12, 6, 8)]
    args = T.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=1,
                               gradient_checkpointing=True, report_to=[], use_cpu=True, save_strategy="no",
                               logging_steps=1, learning_rate=1e-3)
    callback = GdpTrainerCallback(gated)
    trainer = T.Trainer(model=gated, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    assert gated.module.is_gradient_checkpointing and int(gated.bank.step) == 3
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert callback.pruned is not None


def test_a_torch_fx_graph_keeps_its_gates_in_the_graph():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    gated = G.attach(model, POLICY, example_inputs=torch.randn(2, 8), total_steps=4)
    assert isinstance(gated.module, torch.fx.GraphModule) and "torch.fx" in gated.hooks_reason


class _Functional(torch.nn.Module):
    """Token ids in, a gated channel read by a functional linear at the root (no submodule takes
    it as input: no gate hook), a reshape by the sequence length: an export pins it unless the
    length is symbolic."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.w1 = torch.nn.Parameter(torch.randn(12, 8))
        self.w2 = torch.nn.Parameter(torch.randn(4, 12))

    def forward(self, input_ids):
        assert len(input_ids.shape) == 2  # len() of a shape: torch.fx cannot, torch.export can
        h = torch.relu(torch.nn.functional.linear(self.embed(input_ids), self.w1))
        flat = h.reshape(h.shape[0], h.shape[1] * 12)
        return torch.nn.functional.linear(flat.reshape(h.shape[0], -1, 12), self.w2).sum(1)


def test_gates_left_in_an_exported_graph_take_any_sequence_length():
    torch.manual_seed(0)
    policy = {**POLICY, "defaults": {"level": "channel", "block_level": "none"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gated = G.attach(_Functional(), policy, example_inputs={"input_ids": ids((2, 5)) % 16}, total_steps=4)
    assert isinstance(gated.module, torch.fx.GraphModule) and "not the input of one submodule" in gated.hooks_reason
    assert gated.gate_parameters()
    out = gated(ids((3, 9)) % 16)
    assert out.shape == (3, 4)
