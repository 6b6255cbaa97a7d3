"""Prune a Hugging Face Llama (grouped-query attention) and keep it a LlamaForCausalLM.

    python examples/hf_llama_prune.py [--out pruned-llama]

A tiny random config so it runs in seconds on a CPU with no download; point ``from_pretrained``
at your checkpoint for a real one (analyse it on the meta device first if it is large, see
benchmarks/meta_llama8b.py). The steps: analyse (torch.export front end), choose what to remove
(here a random half of the heads and MLP channels; GDP training with ``G.attach`` chooses by
importance), rewrite keeping the class, check generation, save with ``save_pretrained``.
"""
from __future__ import annotations

import argparse

import torch
import transformers as T

import gdp_graph as G


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="save_pretrained folder for the pruned model")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128)
    model = T.LlamaForCausalLM(config).eval()
    inputs = {"input_ids": torch.randint(0, 128, (1, 12)), "use_cache": False}

    analysis = G.analyze(model, inputs)
    print(f"front end: {analysis.traced.front_end} ({analysis.traced.front_end_reason})")
    for g in analysis.groups:
        state = "prunable" if g.prunable and g.exact else "inexact" if g.prunable else g.describe_frozen()[:60]
        print(f"  group {g.id}: {g.size} x {g.unit:8s} {state:10s} {', '.join(g.modules[:3])}")

    plan = G.random_plan(analysis, 0.5, seed=0)
    applied = G.apply_plan(analysis, plan, keep_class=True)
    pruned = applied.model
    print(f"{type(pruned).__name__}: {sum(p.numel() for p in model.parameters()):,} -> "
          f"{sum(p.numel() for p in pruned.parameters()):,} parameters; {applied.verify}")
    print(f"config: {pruned.config.num_attention_heads} heads, {pruned.config.num_key_value_heads} kv heads, "
          f"MLP {pruned.config.intermediate_size}")
    prompt = inputs["input_ids"]
    with torch.no_grad():
        cached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
        uncached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    print(f"generate: {cached[0, -8:].tolist()} (same without the KV cache: {torch.equal(cached, uncached)})")
    if args.out:
        pruned.save_pretrained(args.out)
        print(f"saved to {args.out}; reload with T.LlamaForCausalLM.from_pretrained({args.out!r})")


if __name__ == "__main__":
    main()
