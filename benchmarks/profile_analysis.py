"""cProfile of ``gdp_graph.analyze`` on one benchmark model: the top entries by cumulative and own time.

    python benchmarks/profile_analysis.py densenet121 [--top 25]
    python benchmarks/profile_analysis.py smollm2-shape      # random-weight Llama of SmolLM2-135M's shape
    python benchmarks/profile_analysis.py resnet50 --repeats 5 --no-profile [--gdp PATH]
    python benchmarks/profile_analysis.py mobilenet_v3_large --stages [--peer]

It first prints the CPU time (``time.process_time``) of unprofiled calls, the least of
``--repeats``: on a shared machine that is steadier than the wall clock. ``--gdp PATH`` analyses
with the gdp-graph found at PATH (a checkout of another commit), to compare two commits.
``--stages`` prints the CPU time of each stage of ``analyze`` instead of a profile (each the
least of ``--repeats``): the private copy, fx tracing, the recording forward (and beside it the
full recording, which keeps every number, and the plain eager forward), propagation, grouping and blocks; ``--peer`` adds Torch-Pruning's
whole analysis (``DependencyGraph().build_dependency`` plus every group) on the same model.

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

LLAMA = "smollm2-shape"


def smollm2_shape() -> tuple[torch.nn.Module, Any]:
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                           rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    model = T.LlamaForCausalLM(config).eval()
    return model, {"input_ids": torch.randint(0, config.vocab_size, (1, 16))}


def _least_cpu(fn: Any, repeats: int) -> float:
    """The least CPU time (``time.process_time``) of ``repeats`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def stage_times(model: torch.nn.Module, inputs: Any, repeats: int, peer: bool = False) -> str:
    """One line: the CPU seconds of each stage of ``analyze`` on ``model`` (least of ``repeats``)."""
    from gdp_graph.graph import analysis, blocks, grouping
    from gdp_graph.graph import trace as tracing
    from gdp_graph.graph.model_copy import private_copy

    args = inputs if isinstance(inputs, tuple) else ()
    kwargs = inputs if isinstance(inputs, dict) else {}
    traced = tracing.trace(model, inputs)
    store = analysis.propagate(traced)
    groups = grouping.form_groups(traced, store, store.roots())[0]
    with torch.no_grad():
        times = {"analyze": lambda: analysis.analyze(model, inputs),
                 "private copy": lambda: private_copy(model),
                 "fx trace": lambda: tracing.symbolic_trace_with_fallback(traced.module),
                 "recording forward": lambda: tracing._record(traced.gm, traced.example_inputs, shapes=True),
                 "(full recording)": lambda: tracing._record(traced.gm, traced.example_inputs),
                 "(eager forward)": lambda: model(*args, **kwargs),
                 "propagate": lambda: analysis.propagate(traced),
                 "groups": lambda: grouping.form_groups(traced, store, store.roots()),
                 "blocks": lambda: blocks.find_blocks(traced, groups)}
        if traced.front_end != "fx":  # torch.export: its tracing is not separable here
            del times["fx trace"]
        line = ", ".join(f"{k} {_least_cpu(fn, repeats):.3f}" for k, fn in times.items())
    if peer:
        import torch_pruning as tp

        def theirs() -> None:
            list(tp.DependencyGraph().build_dependency(model, example_inputs=args[0]).get_all_groups())
        theirs()
        line += f"; Torch-Pruning {_least_cpu(theirs, repeats):.3f}"
    return f"CPU seconds (least of {repeats}, front end {traced.front_end}): {line}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help=f"a model of benchmarks/models (BENCH) or {LLAMA}")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3, help="unprofiled calls timed (after one warm-up)")
    p.add_argument("--no-profile", action="store_true", help="only the timed calls")
    p.add_argument("--gdp", help="import gdp_graph from this folder")
    p.add_argument("--stages", action="store_true", help="CPU time per stage instead of a profile")
    p.add_argument("--peer", action="store_true", help="with --stages: Torch-Pruning's analysis too")
    args = p.parse_args()
    if args.gdp:  # before anything imports gdp_graph (the benchmark models do)
        sys.path.insert(0, args.gdp)
    import gdp_graph as G
    from benchmarks.models import BENCH

    if args.model not in BENCH and args.model != LLAMA:
        p.error(f"model: choose from {', '.join(sorted(BENCH) + [LLAMA])}")
    if args.peer and (args.model == LLAMA or not args.stages):
        p.error("--peer: with --stages, on a model of benchmarks/models (an image input)")

    torch.set_num_threads(1)
    model, inputs = smollm2_shape() if args.model == LLAMA else BENCH[args.model]()
    G.analyze(model, inputs)  # warm-up: first-call costs (imports, dispatcher caches) are not the analysis
    cpu, wall = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        G.analyze(model, inputs)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    print(f"analyze {args.model} ({Path(G.__file__).parents[1]}): CPU {min(cpu):.3f} s (least of {args.repeats}), "
          f"wall {min(wall):.3f}-{max(wall):.3f} s")
    if args.stages:
        print(stage_times(model, inputs, args.repeats, args.peer))
        return
    if args.no_profile:
        return
    profiler = cProfile.Profile()
    profiler.enable()
    G.analyze(model, inputs)
    profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
