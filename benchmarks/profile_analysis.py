"""cProfile of ``gdp_graph.analyze`` on one benchmark model: the top entries by cumulative and own time.

    python benchmarks/profile_analysis.py densenet121 [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import gdp_graph as G  # noqa: E402
from benchmarks.models import BENCH  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(BENCH))
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, inputs = BENCH[args.model]()
    G.analyze(model, inputs)  # warm-up: first-call costs (imports, dispatcher caches) are not the analysis
    profiler = cProfile.Profile()
    profiler.enable()
    G.analyze(model, inputs)
    profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
