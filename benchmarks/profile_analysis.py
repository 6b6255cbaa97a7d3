"""cProfile of ``gdp_graph.analyze`` on one benchmark model: the top entries by cumulative and own time.

    python benchmarks/profile_analysis.py densenet121 [--top 25]
    python benchmarks/profile_analysis.py smollm2-shape      # random-weight Llama of SmolLM2-135M's shape

``smollm2-shape`` is a ``LlamaConfig`` with SmolLM2-135M's sizes (30 layers, hidden 576, 9 query and
3 key/value heads, MLP 1536, tied 49,152-token embeddings) and random weights, analysed on 16
tokens as ``benchmarks/llm_tools_speed.py`` does with the real weights (which take ~40 s to load).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import gdp_graph as G  # noqa: E402
from benchmarks.models import BENCH  # noqa: E402

LLAMA = "smollm2-shape"


def smollm2_shape() -> tuple[torch.nn.Module, Any]:
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                           rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    model = T.LlamaForCausalLM(config).eval()
    return model, {"input_ids": torch.randint(0, config.vocab_size, (1, 16))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(BENCH) + [LLAMA])
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, inputs = smollm2_shape() if args.model == LLAMA else BENCH[args.model]()
    start = time.perf_counter()
    G.analyze(model, inputs)  # warm-up: first-call costs (imports, dispatcher caches) are not the analysis
    warm = time.perf_counter() - start
    start = time.perf_counter()
    G.analyze(model, inputs)
    plain = time.perf_counter() - start
    profiler = cProfile.Profile()
    profiler.enable()
    G.analyze(model, inputs)
    profiler.disable()
    print(f"analyze: first call {warm:.3f} s, second call {plain:.3f} s (unprofiled)")
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
