"""CPU decode speed of a pruned SmolLM2-135M's saved folder against the original, and where the
time goes: greedy decoding of ``--new`` tokens at batch 1 after a ``--prompt``-token prefill,
one thread, the two models alternating round by round in one process.

The pruned model comes from a one-shot method (default ``activation``, policy ``llm``) without
recovery: speed depends on the shapes only. It is saved with ``save_hf``, reloaded with plain
transformers (``trust_remote_code`` for the per-layer form) and checked to compute the pruned
model's logits. Two timings per round and model: ``decode``, a loop of one-token forwards with
the KV cache (the model alone), and ``generate``, ``model.generate`` of the same tokens minus its
prefill (what a user sees). Each reports the median ms per token with the min and max over
rounds; the speed-up is the median of the per-round ratios, compared with the ideal
(original parameters / pruned parameters). One more round per model with forward hooks splits
the decode time into embedding, attention, MLP, norms, lm_head and the rest (Python, cache,
rotary, masks). Each target appends one record (``benchmarks/records.py``) to
``benchmarks/results/llm_decode.json``; a rerun skips what the same clean commit recorded.

    python benchmarks/llm_decode.py --targets 0.7 0.5
    python benchmarks/llm_decode.py --table
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import records  # noqa: E402
from benchmarks.llm_prune import policy_label  # noqa: E402

BENCH = "llm_decode"
OUT = ROOT / "benchmarks" / "results" / "llm_decode.json"
PARTS = ("embedding", "attention", "mlp", "norms", "lm_head")


@torch.no_grad()
def decode_seconds(model: nn.Module, prompt: torch.Tensor, new: int, after_prefill: Callable = lambda: None) -> float:
    """Seconds of ``new`` greedy one-token forwards with the KV cache after the prompt's prefill
    (``after_prefill`` is called between the two)."""
    out = model(input_ids=prompt, use_cache=True)
    after_prefill()
    token = out.logits[:, -1:].argmax(-1)
    # transformers 5.x renamed past_key_values to cache (the old name warns at every step)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = out[name] if name in out else out.past_key_values
    started = time.perf_counter()
    for _ in range(new):
        out = model(input_ids=token, use_cache=True, **{name: cache})
        token, cache = out.logits[:, -1:].argmax(-1), out[name]
    return time.perf_counter() - started


@torch.no_grad()
def generate_seconds(model: nn.Module, prompt: torch.Tensor, new: int) -> float:
    """Seconds of ``model.generate`` of ``new`` greedy tokens less one prefill forward."""
    started = time.perf_counter()
    model(input_ids=prompt, use_cache=True)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    return max(time.perf_counter() - started - prefill, 1e-9)


def _summary(seconds: list[float], new: int) -> dict[str, Any]:
    ms = [1000 * s / new for s in seconds]
    return {"ms_per_token_median": statistics.median(ms), "ms_per_token_min": min(ms), "ms_per_token_max": max(ms),
            "tokens_per_s": 1000 / statistics.median(ms), "rounds_ms_per_token": ms}


def interleaved(models: dict[str, nn.Module], rounds: int, prompt: torch.Tensor, new: int) -> dict[str, Any]:
    """Both timings of every model, the models alternating (their order flips every round), with
    the per-round speed-ups of ``pruned`` over ``original``."""
    timers: dict[str, Callable] = {"decode": decode_seconds, "generate": generate_seconds}
    times = {name: {kind: [] for kind in timers} for name in models}
    names = list(models)
    for m in models.values():  # warm-up: first calls allocate
        decode_seconds(m.eval(), prompt, 2)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            for kind, timer in timers.items():
                times[name][kind].append(timer(models[name], prompt, new))
    out: dict[str, Any] = {name: {kind: _summary(t, new) for kind, t in kinds.items()} for name, kinds in times.items()}
    for kind in timers:
        ratios = [a / b for a, b in zip(times["original"][kind], times["pruned"][kind])]
        out[f"{kind}_speedup"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                  "rounds": ratios}
    return out


def _part_of(name: str) -> Optional[str]:
    leaf = name.rpartition(".")[2]
    if leaf in ("embed_tokens", "wte", "embed_in"):
        return "embedding"
    if leaf in ("self_attn", "attn", "attention"):
        return "attention"
    if leaf == "mlp":
        return "mlp"
    if leaf == "lm_head":
        return "lm_head"
    if leaf.endswith("norm") or leaf.endswith("layernorm"):
        return "norms"
    return None


def where_the_time_goes(model: nn.Module, prompt: torch.Tensor, new: int) -> dict[str, Any]:
    """ms per decoded token in each part of the model (forward hooks on its modules; a part's
    modules never nest) and the rest of the forward, with the parameters of each part."""
    spent = dict.fromkeys(PARTS, 0.0)
    params = dict.fromkeys(PARTS, 0)
    started: dict[int, float] = {}
    handles = []
    counted = set()
    for name, module in model.named_modules():
        part = _part_of(name)
        if part is None:
            continue
        for p in module.parameters():
            if id(p) not in counted:
                counted.add(id(p))
                params[part] += p.numel()
        handles.append(module.register_forward_pre_hook(lambda m, a: started.__setitem__(id(m), time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, a, o, part=part: spent.__setitem__(part, spent[part] + time.perf_counter() - started[id(m)])))
    try:
        total = decode_seconds(model, prompt, new, after_prefill=lambda: spent.update(dict.fromkeys(PARTS, 0.0)))
    finally:
        for h in handles:
            h.remove()
    ms = {part: 1000 * s / new for part, s in spent.items()}
    ms["rest"] = 1000 * total / new - sum(ms.values())
    return {"ms_per_token": ms, "params": params, "total_ms_per_token": 1000 * total / new}


def pruned_folder(original: nn.Module, task: Any, policy: Any, method: str, calibration: int,
                  folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The one-shot pruned model saved to ``folder`` and reloaded with plain transformers
    (checked to give the in-memory pruned model's logits), with what the record says about it."""
    import transformers as T
    from gdp_graph.prune.hf_save import save_hf
    from gdp_graph.prune.keep_class import keep_class_of
    from gdp_graph.recipes.oneshot import one_shot_prune
    from gdp_graph.recipes.task import model_inputs
    _, example = model_inputs(task, next(iter(task.train_loader)))
    started = time.perf_counter()
    pruned, report, analysis = one_shot_prune(original, example, task, policy, method,
                                              calibration_batches=calibration)
    kept = keep_class_of(analysis, report.plan, pruned).model
    if kept is None:
        raise RuntimeError(f"the class was not kept ({method} at {policy.target.fraction})")
    uniform = save_hf(kept, analysis, report.plan, folder)
    loaded = T.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=not uniform)
    ids = torch.randint(0, original.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        same = torch.allclose(loaded.eval()(input_ids=ids).logits, kept.eval()(input_ids=ids).logits, atol=1e-4,
                              rtol=1e-3)
    c = loaded.config
    shapes = {"layers": c.num_hidden_layers, "hidden": int(loaded.model.embed_tokens.weight.shape[1]),
              "q_heads": loaded.model.layers[0].self_attn.q_proj.out_features // c.head_dim,
              "kv_heads": loaded.model.layers[0].self_attn.k_proj.out_features // c.head_dim,
              "mlp": loaded.model.layers[0].mlp.up_proj.out_features}
    return loaded.eval(), {"uniform_folder": uniform, "same_logits": same, "shapes": shapes,
                           "removed_blocks": len(report.plan.removed_blocks),
                           "prune_seconds": time.perf_counter() - started}


def run_target(original: nn.Module, task: Any, args: argparse.Namespace, target: float) -> dict[str, Any]:
    from gdp_graph.graph.cost import count_params
    from gdp_graph.policy import load_policy, policy_from_dict
    data = load_policy(args.policy).to_dict()
    data["target"]["fraction"] = target
    policy = policy_from_dict(data, source=f"{args.policy} at {target}", name="llm")
    folder = ROOT / "runs" / "llm_decode" / f"{args.method}-{target}" / "hf"
    pruned, about = pruned_folder(original, task, policy, args.method, args.calibration_batches, folder)
    print(f"  pruned and saved in {about['prune_seconds']:.0f} s: {about['shapes']}; timing {args.rounds} rounds",
          flush=True)
    prompt = torch.randint(0, original.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    speed = interleaved({"original": original, "pruned": pruned}, args.rounds, prompt, args.new)
    params, params0 = count_params(pruned), count_params(original)
    ideal = params0 / params
    profile = {name: where_the_time_goes(m, prompt, args.new) for name, m in (("original", original),
                                                                              ("pruned", pruned))}
    return {**about, "params": params, "params_original": params0, "ideal_speedup": ideal,
            "decode_speedup": speed["decode_speedup"]["median"], "generate_speedup": speed["generate_speedup"]["median"],
            "decode_share_of_ideal": speed["decode_speedup"]["median"] / ideal,
            "generate_share_of_ideal": speed["generate_speedup"]["median"] / ideal,
            "speed": speed, "profile": profile}


def settings_of(args: argparse.Namespace, target: float) -> dict[str, Any]:
    return {"model": "SmolLM2-135M-Instruct", "method": args.method, "target": target, "policy": policy_label(args.policy),
            "calibration_batches": args.calibration_batches, "prompt": args.prompt, "new": args.new,
            "rounds": args.rounds, "threads": 1, "batch": 1}


def table(path: Path = OUT) -> str:
    """Markdown tables of the latest record per settings (a shipped policy named the same from any
    checkout): the speed-ups, then where the time goes."""
    latest: dict[str, dict] = {}
    for r in records.load_records(path):
        if r.get("benchmark") == BENCH:
            settings = {**r["settings"], "policy": policy_label(r["settings"].get("policy", ""))}
            latest[repr(sorted(settings.items()))] = r
    rows = sorted(latest.values(), key=lambda r: (r["settings"]["method"], -r["settings"]["target"]))
    lines = ["| method | target | params kept | ideal | decode speed-up (min-max) | of ideal | generate speed-up "
             "(min-max) | of ideal | ms/token original -> pruned |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, x = r["settings"], r["result"]
        d, g = x["speed"]["decode_speedup"], x["speed"]["generate_speedup"]
        lines.append(f"| {s['method']} | {s['target']:g} | {x['params'] / x['params_original']:.3f} | "
                     f"{x['ideal_speedup']:.2f} | {d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f}) | "
                     f"{x['decode_share_of_ideal']:.2f} | {g['median']:.2f} ({g['min']:.2f}-{g['max']:.2f}) | "
                     f"{x['generate_share_of_ideal']:.2f} | {x['speed']['original']['decode']['ms_per_token_median']:.1f}"
                     f" -> {x['speed']['pruned']['decode']['ms_per_token_median']:.1f} |")
    lines += ["", "| method | target | model | " + " | ".join(f"{p} ms (params M)" for p in PARTS) + " | rest ms | total ms |",
              "|---|---:|---|" + "---:|" * (len(PARTS) + 2)]
    for r in rows:
        s = r["settings"]
        for name, prof in r["result"]["profile"].items():
            ms, params = prof["ms_per_token"], prof["params"]
            lines.append(f"| {s['method']} | {s['target']:g} | {name} | "
                         + " | ".join(f"{ms[p]:.2f} ({params[p] / 1e6:.1f})" for p in PARTS)
                         + f" | {ms['rest']:.2f} | {prof['total_ms_per_token']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5])
    p.add_argument("--method", default="activation", choices=("activation", "magnitude", "taylor", "depth"))
    p.add_argument("--calibration-batches", type=int, default=2)
    p.add_argument("--policy", default=str(ROOT / "policies" / "llm.yaml"))
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per model")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens (prefilled, not timed)")
    p.add_argument("--new", type=int, default=32, help="greedy tokens decoded per round")
    records.add_record_flags(p, results=OUT, results_flag="--out")
    args = records.parse_or_table(p, argv, table)
    if args is None:
        return 0
    torch.set_num_threads(1)
    import smollm2
    original, task = None, None
    runs = [(target, settings_of(args, target)) for target in args.targets]
    for target, settings in records.pending(args.out, BENCH, runs, args.rerun):
        if original is None:
            original, task = smollm2.model().eval(), smollm2.task()
        print(f"{args.method} at {target}", flush=True)
        result = run_target(original, task, args, target)
        records.append_record(args.out, records.new_record(BENCH, settings, result, note=args.note))
        print(f"{args.method} at {target}: params kept {result['params'] / result['params_original']:.3f}, decode "
              f"x{result['decode_speedup']:.2f} of ideal x{result['ideal_speedup']:.2f} "
              f"({result['decode_share_of_ideal']:.2f}), generate x{result['generate_speedup']:.2f}", flush=True)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
