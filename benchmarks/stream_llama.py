"""Streaming apply of a plan onto a 1.1B-parameter bfloat16 Llama checkpoint (random weights,
16 layers, GQA, 400 MB shards), against the in-memory rewrite.

    OMP_NUM_THREADS=1 python benchmarks/stream_llama.py [--folder runs/llama1b] [--ratio 0.3]

Stages, each a fresh process under ``/usr/bin/time -v`` (its peak RSS is the process's own):
1. the checkpoint is created once under ``runs/`` (never committed; reused when present);
2. ``gdp-graph check hf:DIR --meta --save-plan``: a random plan from config.json alone;
3. ``gdp-graph apply hf:DIR PLAN --out OUT``: the streaming writer;
4. the in-memory path: load, analyse, rewrite (the model's own class), then compare every tensor
   and the logits with the streamed folder loaded by plain ``AutoModelForCausalLM.from_pretrained``.
One record goes to ``benchmarks/results/stream_llama.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import records  # noqa: E402

CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
              tie_word_embeddings=False)


def create(folder: Path) -> None:
    import torch
    import transformers as T
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(**CONFIG, dtype="bfloat16")).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="400MB")


def equal(folder: Path, plan: Path, out: Path) -> None:
    """The in-memory rewrite against the streamed folder; prints one JSON line."""
    import warnings

    import torch
    import transformers as T

    import gdp_graph as G
    from gdp_graph.cli.spec import load_hf
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    model, inputs = load_hf(f"hf:{folder}")
    # the rewrite alone (no verification, the GraphModule): verifying a bfloat16 model holds
    # float32 copies, more than a shared machine had free; tests/test_stream.py verifies
    pruned = G.rewrite(G.analyze(model, inputs), G.PruningPlan.load(plan), check=False, keep_class=False)
    seconds = time.perf_counter() - start
    del model
    loaded, info = T.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    a, b = pruned.state_dict(), loaded.state_dict()
    shared = sorted(set(a) & set(b))
    same = set(b) <= set(a) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in shared)
    info = {k: sorted(map(str, v)) for k, v in info.items()}
    print(json.dumps({"tensors_equal": same, "tensors_compared": len(shared), "loading_info": info,
                      "in_memory_seconds": seconds}))


def timed(argv: list[str]) -> tuple[dict, float, float]:
    """Run ``argv`` under /usr/bin/time -v: (its last JSON output, wall seconds, peak RSS GB)."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    text = done.stdout.strip()
    start_json = text.find("{")
    return (json.loads(text[start_json:]) if start_json >= 0 else {}), wall, rss_kb / 2 ** 20


def table(path: Path) -> str:
    """The stages of the last full run recorded in the file (docs/scale.md shows it)."""
    runs = [r for r in records.load_records(path)
            if r.get("benchmark") == "stream_llama" and r["result"].get("in_memory")]
    if not runs:
        raise SystemExit(f"{path}: no full stream_llama run recorded")
    r = runs[-1]
    x = r["result"]
    rows = [("plan from config.json on the meta device", x["plan_meta"]),
            (f"streaming apply (the writer itself {x['stream']['writer_seconds']:.1f} s)", x["stream"]),
            ("in-memory rewrite, compared with the streamed folder", x["in_memory"])]
    return "\n".join([f"ratio {r['settings']['ratio']:g}, {r['date'][:10]}, commit {(r['commit'] or '?')[:7]}:", "",
                      "| stage | wall | peak RSS |", "|---|---:|---:|",
                      *(f"| {name} | {v['seconds']:.0f} s | {v['peak_rss_gb']:.2f} GB |" for name, v in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="runs/llama1b")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--stage", choices=["create", "equal"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-in-memory", action="store_true", help="skip stage 4 (it holds the model twice)")
    parser.add_argument("--only-in-memory", action="store_true", help="stage 4 alone, against the last streamed folder")
    parser.add_argument("--table", action="store_true", help="print the last recorded run's stages and stop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/stream_llama.json",
                        help="the results file (default benchmarks/results/stream_llama.json)")
    records.add_record_flags(parser)
    args = parser.parse_args()
    if args.table:
        return print(table(args.out))
    folder, work = ROOT / args.folder, ROOT / f"{args.folder}_work"
    if args.stage == "create":
        return create(folder)
    if args.stage == "equal":
        return equal(folder, work / "plan.json", work / "out")
    settings = {"config": CONFIG, "dtype": "bfloat16", "ratio": args.ratio, "seed": 0, "max_shard_size": "400MB"}
    if args.only_in_memory:
        same, mem_s, mem_rss = timed([sys.executable, __file__, "--folder", args.folder, "--stage", "equal"])
        result = {"in_memory": {**same, "seconds": mem_s, "peak_rss_gb": mem_rss}}
        print(json.dumps(result, indent=1))
        return records.append_record(args.out,
                                     records.new_record("stream_llama_in_memory", settings, result, seed=0,
                                                        note=args.note))
    cli = [sys.executable, "-m", "gdp_graph.cli.main"]
    created = None
    if not (folder / "config.json").is_file():
        _, seconds, rss = timed([sys.executable, __file__, "--folder", args.folder, "--stage", "create"])
        created = {"seconds": seconds, "peak_rss_gb": rss}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    plan, plan_s, plan_rss = timed([*cli, "check", f"hf:{folder}", "--meta", "--blocks", "0", "--ratio",
                                    str(args.ratio), "--save-plan", str(work / "plan.json"), "--json"])
    stream, stream_s, stream_rss = timed([*cli, "apply", f"hf:{folder}", str(work / "plan.json"), "--out",
                                          str(work / "out"), "--json"])
    result = {"checkpoint_gb": size / 2 ** 30, "shards": len(list(folder.glob("*.safetensors"))),
              "params_before": stream["params_before"], "params_after": stream["params_after"],
              "created": created, "plan_meta": {"seconds": plan_s, "peak_rss_gb": plan_rss,
                                                "groups_pruned": plan["groups_pruned"]},
              "stream": {"seconds": stream_s, "writer_seconds": stream["seconds"], "peak_rss_gb": stream_rss,
                         "shards_out": stream["shards"], "gb_out": stream["bytes_after"] / 2 ** 30}}
    if not args.skip_in_memory:
        same, mem_s, mem_rss = timed([sys.executable, __file__, "--folder", args.folder, "--stage", "equal"])
        result["in_memory"] = {**same, "seconds": mem_s, "peak_rss_gb": mem_rss}
    print(json.dumps(result, indent=1))
    records.append_record(args.out,
                          records.new_record("stream_llama", settings, result, seed=0, note=args.note))


if __name__ == "__main__":
    main()
