"""Analyze a Llama-3-8B- or Llama-3-70B-sized model created on the meta device (no weights
materialized): time and the process's peak memory, one record per run.

    OMP_NUM_THREADS=1 python benchmarks/meta_llama8b.py --model 8b
    OMP_NUM_THREADS=1 python benchmarks/meta_llama8b.py --model 70b [--layers 80] [--seq 8]

Run one model per process: the peak RSS recorded (``ru_maxrss``) is the process's own. That a
plan made on a meta analysis applies to the real model is tested on a tiny config
(tests/test_hf_models.py, tests/test_stream.py). On the meta device residual blocks are found
but stay frozen: their constant output on a zero input needs the weights.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers as T

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gdp_graph as G  # noqa: E402
from benchmarks import records  # noqa: E402

CONFIGS = {
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192),
    "70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=8192),
}


def llama3_config(model: str, layers: int | None = None) -> T.LlamaConfig:
    settings = dict(CONFIGS[model], rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    if layers is not None:
        settings["num_hidden_layers"] = layers
    return T.LlamaConfig(**settings, dtype="bfloat16")


def table(path: str) -> str:
    """Every recorded run of the file as a table (docs/scale.md shows it)."""
    lines = ["| config | analyze | random plan | peak RSS | date | commit |", "|---|---:|---:|---:|---|---|"]
    for r in records.load_records(path):
        if r.get("benchmark") == "meta_llama":
            s, x = r["settings"], r["result"]
            lines.append(f"| {s['model'].upper()}, {s['layers']} layers | {x['analyze_seconds']:.0f} s | "
                         f"{x['plan_seconds']:.1f} s | {x['peak_rss_gb']:.2f} GB | {r['date'][:10]} | "
                         f"{(r['commit'] or '?')[:7]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="8b")
    parser.add_argument("--layers", type=int, default=None, help="default: the model's own count")
    parser.add_argument("--seq", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/meta_llama.json"))
    parser.add_argument("--table", action="store_true", help="print every run recorded in --out and stop")
    records.add_record_flags(parser)
    args = parser.parse_args()
    if args.table:
        return print(table(args.out))
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    config = llama3_config(args.model, args.layers)
    start = time.perf_counter()
    with torch.device("meta"):
        model = T.LlamaForCausalLM(config).eval()
        ids = torch.zeros(1, args.seq, dtype=torch.long)
    built = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    analysis = G.analyze(model, {"input_ids": ids, "use_cache": False})
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    plan = G.random_plan(analysis, 0.5, seed=0)
    planned = time.perf_counter() - start
    heads = [g for g in analysis.groups if g.unit == "head"]
    mlp = [g for g in analysis.groups if g.size == config.intermediate_size and g.prunable]
    frozen = sorted({r for b in analysis.blocks for r in b.frozen_reasons})
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    result = {"params": params, "build_seconds": built, "analyze_seconds": elapsed, "plan_seconds": planned,
              "peak_rss_gb": peak_gb, "front_end": analysis.traced.front_end, "groups": len(analysis.groups),
              "prunable_groups": len(analysis.prunable_groups()), "head_groups": len(heads),
              "mlp_groups": len(mlp), "blocks": len(analysis.blocks),
              "frozen_blocks": sum(1 for b in analysis.blocks if b.frozen_reasons), "frozen_reasons": frozen,
              "plan_groups_pruned": len(plan.keep)}
    print(f"Llama-3-{args.model} config, {config.num_hidden_layers} layers, {params / 1e9:.2f}B parameters on the "
          f"meta device, input 1x{args.seq}: analyze {elapsed:.1f} s (build {built:.1f} s, random plan "
          f"{planned:.1f} s), peak RSS {peak_gb:.2f} GB; groups {len(analysis.groups)}, prunable "
          f"{len(analysis.prunable_groups())}, blocks {len(analysis.blocks)} ({result['frozen_blocks']} frozen)")
    settings = {"model": args.model, "layers": config.num_hidden_layers, "seq": args.seq, "dtype": "bfloat16"}
    records.append_record(args.out, records.new_record("meta_llama", settings, result, seed=0, note=args.note))


if __name__ == "__main__":
    main()
