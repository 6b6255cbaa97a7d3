"""SmolLM2-135M pruned by every method to a share of its parameters, all recovered alike, on
Shakespeare: validation perplexity before and after recovery, parameters, FLOPs per token and
CPU prefill / decode speed of the saved model against the original.

Each run (target, method, seed) appends one record (``benchmarks/records.py``) to
``benchmarks/results/llm_prune.json`` and is skipped on a rerun when the same clean commit
already recorded the same settings, so an interrupted benchmark resumes. Every method gets the
same recovery: ``--steps`` AdamW steps (gdp: its gated steps up to the cut count in them) on
batches of 2 x 256 training tokens, the same learning rate, and logit distillation from the
frozen original (policy ``llm``'s ``distill``) unless ``--no-distill``. The ``unpruned`` row is
the original model trained the same steps. Perplexity: the first ``--eval-windows`` windows of
256 tokens of valid.txt. Speed: the saved folder (``save_pretrained``, reloaded by plain
transformers) against the original, one thread, alternating rounds in this process.

    python benchmarks/llm_prune.py --targets 0.7 0.5 --methods unpruned activation gdp magnitude depth taylor
    python benchmarks/llm_prune.py --table          # the markdown table of the recorded runs
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks import records  # noqa: E402

BENCH = "llm_prune"
OUT = ROOT / "benchmarks" / "results" / "llm_prune.json"
METHODS = ("unpruned", "gdp", "gdp@activation", "activation", "magnitude", "taylor", "depth")


def _ppl(loss: Optional[float]) -> Optional[float]:
    return None if loss is None else float(math.exp(loss))


def flops_per_token(model: nn.Module, length: int = 256) -> float:
    ids = torch.zeros(1, length, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, use_cache=False)
    return float(counter.get_total_flops()) / length


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def speed(models: dict[str, nn.Module], rounds: int = 3, prompt: int = 128, new: int = 32) -> dict[str, Any]:
    """Prefill (one forward of ``prompt`` tokens) and decode (greedy ``new`` tokens with the KV
    cache) tokens/s per model, the models alternating round by round; medians."""
    vocab = min(getattr(m.config, "vocab_size", 1000) for m in models.values())
    ids = torch.randint(0, vocab, (1, prompt), generator=torch.Generator().manual_seed(0))
    times: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in models}
    with torch.no_grad():
        for _ in range(rounds):
            for name, m in models.items():
                m.eval()
                times[name]["prefill"].append(_timed(lambda: m(input_ids=ids, use_cache=False)))
                total = _timed(lambda: m.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                                  pad_token_id=0))
                times[name]["decode"].append(max(total - times[name]["prefill"][-1], 1e-9))
    out: dict[str, Any] = {}
    for name, t in times.items():
        out[name] = {"prefill_tokens_per_s": prompt / statistics.median(t["prefill"]),
                     "decode_tokens_per_s": new / statistics.median(t["decode"])}
    return out


def _saved_model(pruned: nn.Module, run: dict, folder: Path, check_ids: torch.Tensor) -> tuple[nn.Module, str]:
    """The pruned model reloaded from its saved folder (``save_hf``; the reference row:
    ``save_pretrained``) with plain transformers when that reproduces it, else the in-memory
    model and why not."""
    import transformers as T
    from gdp_graph.prune.hf_save import save_hf
    try:
        if run.get("analysis") is None:
            pruned.save_pretrained(folder)
        else:
            save_hf(pruned, run["analysis"], run["plan"], folder)
        loaded = T.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True).eval()
        with torch.no_grad():
            same = torch.allclose(loaded(input_ids=check_ids, use_cache=False).logits,
                                  pruned.eval()(input_ids=check_ids, use_cache=False).logits, atol=1e-4, rtol=1e-3)
        return (loaded, "") if same else (pruned, "the reloaded folder computes other logits")
    except Exception as exc:  # noqa: BLE001 - report why the folder is not usable, measure in memory
        return pruned, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _reference_run(original: nn.Module, task: Any, args: argparse.Namespace, policy: Any) -> dict[str, Any]:
    """The unpruned model trained the same steps (with the same distillation)."""
    from gdp_graph.recipes.evaluation import evaluate
    from gdp_graph.recipes.recovery import Distillation, frozen_teacher, make_optimizer, train_steps
    device = torch.device("cpu")
    model = copy.deepcopy(original)
    teacher = (None if args.no_distill else
               Distillation(frozen_teacher(original, device), policy.distill.temperature, policy.distill.alpha))
    started = time.perf_counter()
    train_steps(model, task, device, args.steps, make_optimizer(list(model.parameters()), args.lr, kind="adam"),
                distill=teacher, after_step=lambda step, loss, info: _progress("train", step, args.steps,
                                                                               {"loss": loss, **info}))
    return {"model": model.eval(), "metrics": {"fine_tuned": evaluate(model, task, device)},
            "seconds": time.perf_counter() - started, "extra": {}}


def _progress(phase: str, step: int, total: int, info: dict) -> None:
    kept = info.get("kept_model", info.get("soft"))
    print(f"  {phase} {step}/{total}: loss {info['loss']:.3f}, {info.get('tokens_per_s', 0):.0f} tokens/s"
          + (f", kept {kept:.3f}" if kept is not None else ""), flush=True)


def _prune_run(original: nn.Module, task: Any, args: argparse.Namespace, policy: Any, method: str) -> dict[str, Any]:
    from gdp_graph.policy import policy_from_dict
    from gdp_graph.prune.keep_class import keep_class_of
    from gdp_graph.recipes.driver import Schedule, run_prune
    from gdp_graph.recipes.task import model_inputs
    _, example = model_inputs(task, next(iter(task.train_loader)))
    method, _, init_from = method.partition("@")  # gdp@activation: regularizer.init activation
    if method == "gdp":  # gdp: the paper's uniform start; gdp@METHOD: regularizer.init METHOD
        data = policy.to_dict()
        data["regularizer"]["init"] = init_from or "uniform"
        policy = policy_from_dict(data, source=f"{policy.source} with init {init_from or 'uniform'}", name=policy.name)
    schedule = Schedule(steps=args.steps, method=method, optimizer="adam", lr=args.lr, finetune_lr=args.lr,
                        calibration_batches=args.calibration_batches, evaluate_original=False)
    started = time.perf_counter()
    result = run_prune(original, example, task, policy, schedule, torch.device("cpu"), on_progress=_progress,
                       distill=None if args.no_distill else policy.distill)
    kept = keep_class_of(result.analysis, result.plan, result.pruned)
    model = kept.model if kept.model is not None else result.pruned
    extra = {"class_kept": kept.model is not None, "class_reason": kept.reason, "check": str(result.finalize_report.check),
             "removed_blocks": sorted(result.plan.removed_blocks), "seconds": result.seconds}
    if method == "gdp":
        extra["init_from"] = init_from or None
        history = result.history.to_dict()
        extra["gates"] = {"fix": result.gates_report.get("fix"), "soft_fraction": history["soft_fraction"],
                          "hard_fraction": history["hard_fraction"], "step": history["step"],
                          "report": {k: v for k, v in result.gates_report.items() if isinstance(v, (int, float, str))}}
    return {"model": model.eval(), "metrics": result.metrics, "seconds": time.perf_counter() - started, "extra": extra,
            "analysis": result.analysis, "plan": result.plan}


_ORIGINAL: dict[int, float] = {}


def original_ppl(original: nn.Module, task: Any) -> Optional[float]:
    """The unpruned model's validation perplexity (evaluated once per process)."""
    from gdp_graph.recipes.evaluation import evaluate
    if id(original) not in _ORIGINAL:
        _ORIGINAL[id(original)] = _ppl(evaluate(original, task, torch.device("cpu")))
    return _ORIGINAL[id(original)]


def reseed_batches(task: Any, seed: int) -> None:
    """Start the task's training batches over in the order of ``seed``: its loader shuffles with
    a generator of its own, which ``torch.manual_seed`` does not touch and which every earlier run
    of the process has advanced."""
    generator = getattr(task.train_loader, "generator", None)
    if generator is None:
        raise ValueError("the task's train_loader has no generator: its order cannot follow the seed")
    generator.manual_seed(seed)


def run_one(original: nn.Module, task: Any, args: argparse.Namespace, target: float, method: str,
            seed: int) -> dict[str, Any]:
    from gdp_graph.graph.cost import count_params
    from gdp_graph.policy import load_policy, policy_from_dict
    base = load_policy(args.policy)
    data = base.to_dict()
    data["target"]["fraction"] = target
    policy = policy_from_dict(data, source=f"{base.source} at {target}", name=base.name)
    torch.manual_seed(seed)
    reseed_batches(task, seed)
    run = (_reference_run(original, task, args, policy) if method == "unpruned"
           else _prune_run(original, task, args, policy, method))
    folder = ROOT / "runs" / "llm_prune" / f"{method}-{target}-s{seed}"
    check_ids = torch.randint(0, original.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1))
    saved, why_not = _saved_model(run["model"], run, folder / "hf", check_ids)
    fast = speed({"original": original, "pruned": saved}, rounds=args.speed_rounds)
    params, params0 = count_params(saved), count_params(original)
    before = original_ppl(original, task) if method == "unpruned" else _ppl(run["metrics"].get("finalized"))
    return {"ppl_before_recovery": before,
            "ppl_after_recovery": _ppl(run["metrics"].get("fine_tuned")),
            "ppl_original": original_ppl(original, task),
            "params": params, "params_original": params0, "params_kept": params / params0,
            "flops_per_token": flops_per_token(saved), "flops_per_token_original": flops_per_token(original),
            "speed": fast, "decode_speedup": fast["pruned"]["decode_tokens_per_s"] / fast["original"]["decode_tokens_per_s"],
            "prefill_speedup": fast["pruned"]["prefill_tokens_per_s"] / fast["original"]["prefill_tokens_per_s"],
            "ideal_speedup": params0 / params, "saved_folder_loads": not why_not, "saved_folder_problem": why_not or None,
            "seconds": run["seconds"], **run["extra"]}


def settings_of(args: argparse.Namespace, target: float, method: str, seed: int) -> dict[str, Any]:
    from gdp_graph.policy import load_policy
    distill = None if args.no_distill else vars_of(load_policy(args.policy).distill)
    return {"model": "SmolLM2-135M-Instruct", "data": "shakespeare", "target": target if method != "unpruned" else 1.0,
            "method": method, "seed": seed, "steps": args.steps, "batch": 2, "length": 256, "lr": args.lr,
            "distill": distill, "eval_windows": args.eval_windows, "calibration_batches": args.calibration_batches,
            "policy": policy_label(args.policy)}


def vars_of(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict
    return asdict(obj)


def _mean_sd(values: list[float]) -> str:
    if not values or any(v is None for v in values):
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def policy_label(path: Any) -> str:
    """A shipped policy as ``policies/NAME.yaml`` whatever checkout ran it (records made in
    another worktree name the same policy by another absolute path); other files as given."""
    p = Path(str(path))
    return f"policies/{p.name}" if p.parent.name == "policies" else str(path)


def table(path: Path = OUT) -> str:
    """Markdown table of the latest record per settings (seeds pooled per target and method; a
    rerun of the same settings, from any checkout, replaces the earlier record)."""
    latest: dict[str, dict] = {}
    for r in records.load_records(path):
        if r.get("benchmark") == BENCH:
            settings = {**r["settings"], "policy": policy_label(r["settings"].get("policy", ""))}
            latest[repr(sorted(settings.items()))] = r
    rows: dict[tuple, list[dict]] = {}
    for r in latest.values():
        s = r["settings"]
        rows.setdefault((s["target"], s["method"], s["steps"], repr(s["distill"])), []).append(r)
    lines = ["| target | method | seeds | valid ppl before recovery | valid ppl after | params kept | "
             "GFLOPs/token | decode speed-up (ideal) | prefill speed-up | commit |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    if latest:  # the unpruned model as loaded, from any record (every run measures it)
        first = next(iter(latest.values()))["result"]
        lines.append(f"| 1 | original, untrained | - | {first['ppl_original']:.1f} | - | 1.000 | "
                     f"{first['flops_per_token_original'] / 1e9:.3f} | 1.00 (1.00) | 1.00 | - |")
    for (target, method, steps, _), rs in sorted(rows.items(), key=lambda kv: (-kv[0][0], kv[0][1] != "unpruned",
                                                                             kv[0][1])):
        res = [r["result"] for r in rs]
        lines.append(f"| {target:g} | {method} | {len(rs)} | {_mean_sd([x['ppl_before_recovery'] for x in res])} | "
                     f"{_mean_sd([x['ppl_after_recovery'] for x in res])} | "
                     f"{statistics.fmean(x['params_kept'] for x in res):.3f} | "
                     f"{statistics.fmean(x['flops_per_token'] for x in res) / 1e9:.3f} | "
                     f"{statistics.fmean(x['decode_speedup'] for x in res):.2f} "
                     f"({statistics.fmean(x['ideal_speedup'] for x in res):.2f}) | "
                     f"{statistics.fmean(x['prefill_speedup'] for x in res):.2f} | "
                     f"{', '.join(sorted({r['commit'][:7] for r in rs}))} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["activation", "gdp@activation", "gdp", "depth",
                                                                     "magnitude", "unpruned", "taylor"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=20, help="training steps of every run (batches of 2 x 256 tokens)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of every run")
    p.add_argument("--no-distill", action="store_true", help="recover with the task loss only")
    p.add_argument("--eval-windows", type=int, default=16, help="windows of 256 tokens of valid.txt evaluated")
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--speed-rounds", type=int, default=3)
    p.add_argument("--policy", default=str(ROOT / "policies" / "llm.yaml"))
    records.add_record_flags(p, results=OUT, results_flag="--out")
    args = records.parse_or_table(p, argv, table)
    if args is None:
        return 0
    torch.set_num_threads(1)
    import os
    os.environ["LM_EVAL_WINDOWS"] = str(args.eval_windows)
    import smollm2
    original, task = None, None
    runs = [((target, method, seed), settings_of(args, target, method, seed)) for target in args.targets
            for method in args.methods for seed in args.seeds
            if method != "unpruned" or target == args.targets[0]]  # one unpruned reference row
    for (target, method, seed), settings in records.pending(args.out, BENCH, runs, args.rerun):
        if original is None:
            original, task = smollm2.model().eval(), smollm2.task()
        print(f"run {method} at {target} seed {seed} ({args.steps} steps)", flush=True)
        result = run_one(original, task, args, target, method, seed)
        records.append_record(args.out, records.new_record(BENCH, settings, result, seed=seed, note=args.note))
        print(f"  ppl {result['ppl_before_recovery']} -> {result['ppl_after_recovery']}, params kept "
              f"{result['params_kept']:.3f}, decode x{result['decode_speedup']:.2f}", flush=True)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
