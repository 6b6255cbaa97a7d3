"""Analysis speed: gdp-graph ``analyze`` against Torch-Pruning's dependency graph.

Both sides run in one process on the same model and inputs (1 x 3 x 224 x 224, one thread),
alternating which goes first each round; every model's run is a record (``benchmarks/records.py``)
in ``benchmarks/results/analysis_speed.json``: every time, the medians, the spread (min, max),
the ratio, the commit timed and the machine. A rerun skips the models this commit has recorded.

    pip install torch-pruning==1.6.1 --no-deps      # benchmark-only, never a runtime dependency
    python benchmarks/analysis_speed.py [--protocol docs|quick] [--repeats 3] [--models resnet50,densenet121]
        [--out FILE] [--note TEXT]

Torch-Pruning's side is ``DependencyGraph().build_dependency(model, x)`` and listing every
group (``get_all_groups``), the same work ``analyze`` does (groups, couplings, blocks).
``--gdp PATH`` times the gdp-graph found at PATH (e.g. a checkout of an older commit), to put
old and new figures side by side.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import records  # noqa: E402


def _timed(fn: Callable[[], Any], limit_s: int) -> Optional[float]:
    """Seconds ``fn`` took, or None when it ran past ``limit_s`` (SIGALRM interrupts it)."""

    def expire(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(limit_s)
    start = time.perf_counter()
    try:
        fn()
        return time.perf_counter() - start
    except TimeoutError:
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _summary(runs: list[Optional[float]]) -> dict[str, Any]:
    done = [r for r in runs if r is not None]
    if not done or len(done) < len(runs):
        return {"runs": runs, "median_s": None, "min_s": None, "max_s": None}
    return {"runs": [round(r, 4) for r in done], "median_s": round(statistics.median(done), 4),
            "min_s": round(min(done), 4), "max_s": round(max(done), 4)}


def _commit(path: str) -> str:
    import subprocess

    done = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _peer_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")


def _measure(G, model, inputs, theirs: Optional[Callable], repeats: int, limit: int) -> dict[str, Any]:
    """Both sides timed on one model, alternating which goes first each round."""
    analysis = G.analyze(model, inputs)  # warm-up, and the sizes for the table
    record: dict[str, Any] = {"groups": len(analysis.groups), "blocks": len(analysis.blocks),
                              "elements": analysis.store.count - 1, "nodes": len(analysis.traced.gm.graph.nodes)}
    ours: list[Optional[float]] = []
    peer_runs: list[Optional[float]] = []
    peer_alive = theirs is not None and _timed(lambda: theirs(model, inputs), limit) is not None  # warm-up
    if theirs is not None and not peer_alive:
        peer_runs = [None]
    for r in range(repeats):
        for side in (["ours", "theirs"] if r % 2 == 0 else ["theirs", "ours"]):
            if side == "ours":
                ours.append(_timed(lambda: G.analyze(model, inputs), 3600))
            elif peer_alive:
                took = _timed(lambda: theirs(model, inputs), limit)
                peer_runs.append(took)
                peer_alive = took is not None
    record["gdp_graph"] = _summary(ours)
    if theirs is not None:
        record["torch_pruning"] = _summary(peer_runs)
        a, b = record["gdp_graph"]["median_s"], record["torch_pruning"]["median_s"]
        record["ours_over_theirs"] = round(a / b, 3) if a and b else None
    return record


#: named settings; ``docs`` is what docs/benchmarks.md reports
PROTOCOLS = {"docs": {"repeats": 5, "models": ""}, "quick": {"repeats": 1, "models": "resnet50,vit_b_16"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int)
    p.add_argument("--models", help="comma-separated names (empty: all)")
    p.add_argument("--limit", type=int, default=240, help="seconds before a Torch-Pruning run is abandoned")
    p.add_argument("--gdp", default=str(ROOT), help="where to import gdp_graph from")
    p.add_argument("--no-peer", action="store_true", help="time gdp-graph only")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "analysis_speed.json"))
    records.add_record_flags(p)
    args = records.parse_with_protocol(p, PROTOCOLS, "docs")

    sys.path.insert(0, args.gdp)
    import torch

    import gdp_graph as G
    from benchmarks.models import BENCH

    torch.set_num_threads(1)
    peer = None
    if not args.no_peer:
        import torch_pruning as tp
        peer = tp

    def theirs(model, inputs) -> None:
        graph = peer.DependencyGraph().build_dependency(model, example_inputs=inputs[0])
        list(graph.get_all_groups())

    for name in [n for n in args.models.split(",") if n] or list(BENCH):
        settings = {"model": name, "input": [1, 3, 224, 224], "repeats": args.repeats, "limit_s": args.limit,
                    "gdp_graph_commit": _commit(args.gdp), "torch_pruning": _peer_version() if peer else None}
        if not args.rerun and records.recorded(args.out, "analysis_speed", settings):
            print(f"{name}: recorded by this commit, skipped (--rerun to time it again)")
            continue
        model, inputs = BENCH[name]()
        result = _measure(G, model, inputs, theirs if peer else None, args.repeats, args.limit)
        print(f"{name}: {json.dumps(result)}", flush=True)
        records.append_record(args.out, records.new_record("analysis_speed", settings, result, note=args.note))
    print(f"records in {args.out}")


if __name__ == "__main__":
    main()
