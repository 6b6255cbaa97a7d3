"""Analyze a Llama-3-8B-sized model created on the meta device (no weights materialized).

    OMP_NUM_THREADS=1 /usr/bin/time -v python benchmarks/meta_llama8b.py [--layers 32] [--seq 8]

Prints the analysis time, the front end, the groups found and the process's peak memory. That a
plan made on a meta analysis applies to the real model is tested on a tiny config
(tests/test_hf_models.py). On the meta device residual blocks are found but stay frozen: their
constant output on a zero input needs the weights.
"""
from __future__ import annotations

import argparse
import platform
import resource
import time
import warnings

import torch
import transformers as T

import gdp_graph as G


def llama3_8b_config(layers: int) -> T.LlamaConfig:
    return T.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--seq", type=int, default=8)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = T.LlamaForCausalLM(llama3_8b_config(args.layers)).eval()
        ids = torch.zeros(1, args.seq, dtype=torch.long)
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    analysis = G.analyze(model, {"input_ids": ids, "use_cache": False})
    elapsed = time.perf_counter() - start
    heads = [g for g in analysis.groups if g.unit == "head"]
    mlp = [g for g in analysis.groups if g.size == 14336 and g.prunable]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, transformers {T.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"Llama-3-8B config, {args.layers} layers, {params / 1e9:.2f}B parameters on the meta device, input 1x{args.seq}")
    print(f"analyze: {elapsed:.1f} s, front end {analysis.traced.front_end}; peak RSS {peak_mb:.0f} MB")
    print(f"groups {len(analysis.groups)}, prunable {len(analysis.prunable_groups())}, head groups {len(heads)} "
          f"(units {sorted({g.size for g in heads})}), MLP groups {len(mlp)}, blocks {len(analysis.blocks)} "
          f"({sum(1 for b in analysis.blocks if b.frozen_reasons)} frozen)")
    plan = G.random_plan(analysis, 0.5, seed=0)
    print(f"random plan: {len(plan.keep)} groups pruned; kept heads per layer "
          f"{sorted({len(plan.keep.get(g.id, range(g.size))) for g in heads})}")


if __name__ == "__main__":
    main()
