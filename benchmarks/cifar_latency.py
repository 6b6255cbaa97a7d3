"""GDP to a latency target against GDP to a FLOPs target set to the same measured latency, on
CIFAR-10 with a MobileNetV2-style CIFAR network (issue 18's CIFAR criterion).

    python benchmarks/cifar_latency.py run --data ../shared/data/cifar10/cifar-10-python.tar.gz \\
        [--targets 0.5] [--seeds 0 1 2] [--quick]
    python benchmarks/cifar_latency.py table [--results benchmarks/results/cifar_latency.json]

Protocol: ``cpu-short`` of benchmarks/cifar_protocol.py (images 0-9,999 train, 10,000-11,999
are ``acc_val``, the full test set; one checkpoint pretrained for 15 epochs, cached under
``runs/``, never committed; then every run gets 3 gated + 1 fine-tuning epochs, SGD as in
benchmarks/cifar_methods.py). The network: MobileNetV2's inverted residuals (the test zoo's
blocks) at CIFAR strides (stem stride 1), width ``--width`` (0.5). The shipped ``mobilenetv2``
policy (no gates before depthwise convolutions, widths multiples of 8) with its target replaced.
Latency: batch ``--latency-batch`` (16), one thread, the thread's CPU time, each pruned model
timed against the pretrained one in interleaved rounds (median of the per-round ratios, IQR
kept); both are GraphModules (what ``finalize`` returns), so the comparison is like for like.
Batch 16 and not 1: at batch 1 this 32x32 network's time is mostly per-op overhead (every
layer at half its channels measured 0.86 of the latency at width 0.5, at 1/8 of them 0.75,
against 0.51 and 0.22 at batch 16), so a batch-1 target below about 0.75 cannot be met and the
two budgets would keep almost the same minimal model (``--latency-batch 1 --targets 0.85``
compares them there).

Per target T and seed, in this order:

``gdp_flops``    GDP with ``target: {metric: flops, fraction: F}``, F the FLOPs fraction at which
                 one-shot magnitude plans of the checkpoint measure T (``close_loop`` on F, the
                 plans rewritten and timed); its fine-tuned model measures a latency ratio L.
``gdp_latency``  GDP with ``target: {metric: latency, fraction: L}`` (the table timed on this
                 machine, cached under ``--latency-cache``): the latency the FLOPs run measured.

Why this order: GDP trained to a FLOPs budget keeps other layers than one-shot magnitude at the
same FLOPs, so F found on magnitude plans does not put GDP's model at T (a first campaign, run
the other way round, put the FLOPs run 0.09 above the latency run it was calibrated to); a
latency target lands within a few hundredths of its aim, so aiming it at the FLOPs run's
measured latency is what sets the pair at "the same measured latency". Both measured ratios are
recorded, so the table shows how closely that was met.

The criterion: ``gdp_latency``'s mean fine-tuned test accuracy over the seeds at least
``gdp_flops``'. One record per run (commit, command, machine, checkpoint hash); a rerun skips what
this commit recorded on a clean tree; ``--quick`` (1,000 images, 1 + 1 + 1 epochs) is marked
quick and left out of the table unless ``--include-quick``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import records  # noqa: E402
from benchmarks.cifar_methods import _epochs, _loaders  # noqa: E402
from benchmarks.cifar_protocol import PROTOCOLS, QUICK  # noqa: E402
from tests.zoo.mobile import MobileNetV2, _make_divisible  # noqa: E402

BENCHMARK = "cifar_latency"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "cifar_latency.json"
RUNS = ("gdp_flops", "gdp_latency")


class CifarMobileNetV2(MobileNetV2):
    """MobileNetV2 (Sandler et al., 2018) at CIFAR strides: the stem and the first two stages keep
    32x32, three stride-2 stages bring it to 4x4; channels scaled by ``width``."""

    #: t (expansion), c (channels at width 1), n (repeats), s (first stride)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, width: float = 0.5, num_classes: int = 10, last_channel: int = 1280):
        super().__init__(num_classes, _make_divisible(32 * width), last_channel, stem_stride=1,
                         settings=[(t, _make_divisible(c * width), n, s) for t, c, n, s in self.SETTINGS])


def _network(args) -> nn.Module:
    return CifarMobileNetV2(args.width)


def _pretrained(args) -> nn.Module:
    """The network with the checkpoint's weights, in eval mode."""
    model = _network(args)
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


def _policy(args, metric: str, fraction: float):
    from gdp_graph.policy import load_policy, policy_from_dict
    data = load_policy("mobilenetv2").to_dict()
    data["target"].update(metric=metric, fraction=round(float(fraction), 4))
    data["latency"] = {"batch": args.latency_batch, "threads": 1, "cache": str(args.latency_cache)}
    return policy_from_dict(data, source=f"mobilenetv2 to {fraction:.4g} of {metric}", name="mobilenetv2")


def _settings(args):
    from gdp_graph.latency import LatencySettings
    return LatencySettings(batch=args.latency_batch, threads=1, cache=str(args.latency_cache))


def _latency(args, original: nn.Module, pruned: nn.Module) -> dict[str, Any]:
    """``pruned``'s latency ratio against ``original`` (``--latency-batch``, one thread, CPU time)."""
    from gdp_graph.latency.loop import measured_ratio
    from gdp_graph.latency.interleaved import time_models
    x = torch.randn(args.latency_batch, 3, 32, 32)
    t = time_models([original, pruned], (x,), rounds=args.rounds, warmup=2, repeat=args.repeat, threads=1,
                    clock=time.thread_time)
    m = measured_ratio(t[0], t[1])
    return {"ratio": round(m.ratio, 4), "iqr": [round(m.q1, 4), round(m.q3, 4)], "rounds": m.rounds}


def _traced(model: nn.Module) -> nn.Module:
    import torch.fx as fx
    return fx.symbolic_trace(model.eval())


def _gdp(args, model: nn.Module, policy, data, record: dict[str, Any]) -> nn.Module:
    """The gated phase, the cut, finalize and fine-tuning; accuracies and trajectory in ``record``."""
    from gdp_graph.gates.attach import attach
    from gdp_graph.gates.finalize import finalize
    from gdp_graph.gates.model import DEFAULT_GATE_LR
    from gdp_graph.recipes.cifar10.gdp_phase import GateOptimizer
    from gdp_graph.recipes.cifar10.training import evaluate
    train = data.train
    gated = attach(model, policy=policy, example_inputs=torch.randn(2, 3, 32, 32),
                   total_steps=args.sparse_epochs * len(train), steps_per_epoch=len(train), gate_lr=DEFAULT_GATE_LR)

    def log(e: int, st: dict) -> None:
        g = gated.report()
        record["trajectory"].append({"epoch": e + 1, "train_acc": st["accuracy"],
                                     **{k: g[k] for k in ("lambda", "hard_fraction", "soft_fraction", "fixed")}})
        print(f"  {record['run']} t={record['target']} s={record['seed']} epoch {e + 1}: acc {st['accuracy']:.3f} "
              f"kept {g['hard_fraction']:.3f} of {policy.target.metric}", flush=True)
    _epochs(gated, train, args.sparse_epochs, args.lr, optimizer=GateOptimizer(gated, args.lr, DEFAULT_GATE_LR),
            extra_loss=gated.penalty, on_step=lambda s: gated.step(), on_epoch=log)
    record["fix"] = gated.fix_report
    pruned, _ = finalize(gated)
    record["acc_finalized"] = evaluate(pruned, data.test, device="cpu")["accuracy"]
    _epochs(pruned, train, args.finetune_epochs, args.finetune_lr)
    return pruned.eval()


def calibrate_flops(args, model: nn.Module, latency: float) -> dict[str, Any]:
    """The FLOPs fraction whose one-shot magnitude plan of ``model`` measures ``latency``: the
    closed loop of :mod:`gdp_graph.latency.loop` with the FLOPs fraction as the aim."""
    import gdp_graph as G
    from gdp_graph.importance import one_shot_plan, score_units
    from gdp_graph.latency.loop import close_loop, latency_measure
    from gdp_graph.policy import resolve
    analysis = G.analyze(model, (torch.randn(1, 3, 32, 32),))
    resolution = resolve(_policy(args, "flops", 0.5), analysis.groups, analysis.blocks)
    scores = score_units(analysis, "magnitude")

    def plan_at(fraction: float):
        return one_shot_plan(analysis, scores, resolution, fraction, metric="flops")
    measure = latency_measure(_traced(model), lambda p: G.rewrite(analysis, p, keep_class=False).eval(),
                              analysis.traced.example_inputs, _settings(args), rounds=args.rounds, repeat=args.repeat)
    loop = close_loop(latency, plan_at, measure, corrections=args.calibration_rounds, tolerance=0.01)
    return {"flops_target": round(loop.predicted, 4), "measured": round(loop.measured, 4), **loop.to_dict()}


def run_one(args, run: str, target: float, seed: int, fraction: float) -> dict[str, Any]:
    """One GDP run from the checkpoint (``target`` names its row): ``gdp_latency`` to ``fraction``
    of the latency or ``gdp_flops`` to ``fraction`` of the FLOPs; accuracies, kept fractions,
    measured latency."""
    from gdp_graph.graph.cost import model_cost
    from gdp_graph.recipes.cifar10.training import evaluate
    torch.manual_seed(seed)
    data = _loaders(args, seed)
    model = _pretrained(args)
    x1 = torch.randn(1, 3, 32, 32)
    before = model_cost(model, (x1,))
    metric = "latency" if run == "gdp_latency" else "flops"
    record: dict[str, Any] = {"run": run, "target": target, "seed": seed, "metric": metric, "fraction": fraction,
                              "trajectory": []}
    started = time.perf_counter()
    pruned = _gdp(args, model, _policy(args, metric, fraction), data, record)
    after = model_cost(pruned, (x1,))
    record.update(acc_finetuned=evaluate(pruned, data.test, device="cpu")["accuracy"],
                  acc_val=evaluate(pruned, data.val, device="cpu")["accuracy"],
                  flops_kept=after.flops / before.flops, params_kept=after.params / before.params,
                  latency=_latency(args, _traced(model), pruned), seconds=time.perf_counter() - started)
    return record


def pretrain(args) -> None:
    from gdp_graph.recipes.cifar10.training import evaluate
    torch.manual_seed(0)
    data = _loaders(args, 0)
    model = _network(args)
    _epochs(model, data.train, args.pretrain_epochs, 0.1)
    Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.checkpoint)
    print(f"pretrained accuracy {evaluate(model, data.test, device='cpu')['accuracy']:.4f} -> {args.checkpoint}")


def _settings_of(args, run: str, target: float, seed: int) -> dict[str, Any]:
    keys = ("width", "latency_batch", "pretrain_epochs", "sparse_epochs", "finetune_epochs", "lr", "finetune_lr", "train_subset",
            "val_subset", "rounds", "repeat")
    return {"run": run, "target": target, "seed": seed, "quick": args.quick, **{k: getattr(args, k) for k in keys}}


def _append(args, settings: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    record.update(quick=args.quick, checkpoint=str(args.checkpoint))
    print(json.dumps({k: v for k, v in record.items() if k not in ("trajectory", "fix")}), flush=True)
    records.append_record(args.results, records.new_record(BENCHMARK, settings, record, seed=settings["seed"],
                                                           checkpoints=[args.checkpoint], note=args.note))
    return record


def cmd_run(args) -> None:
    if not Path(args.checkpoint).exists():
        pretrain(args)
    for target in args.targets:
        for seed in args.seeds:
            flops = _flops_run(args, target, seed)
            lat_settings = _settings_of(args, "gdp_latency", target, seed)
            if args.rerun or records.recorded(args.results, BENCHMARK, lat_settings) is None:
                measured = flops["result"]["latency"]["ratio"]
                record = run_one(args, "gdp_latency", target, seed, measured)
                record.update(flops_run_ratio=measured)
                _append(args, lat_settings, record)


def _flops_run(args, target: float, seed: int) -> dict[str, Any]:
    """The recorded ``gdp_flops`` run of (target, seed), or a new one: the FLOPs fraction whose
    one-shot magnitude plans measure ``target``, then GDP to it."""
    settings = _settings_of(args, "gdp_flops", target, seed)
    found = None if args.rerun else records.recorded(args.results, BENCHMARK, settings)
    if found is not None:
        return found
    calibration = calibrate_flops(args, _pretrained(args), target)
    print(f"  calibration t={target} s={seed}: latency {target:.3f} <- FLOPs {calibration['flops_target']:.3f} "
          f"(one-shot magnitude measured {calibration['measured']:.3f})", flush=True)
    record = run_one(args, "gdp_flops", target, seed, calibration["flops_target"])
    record.update(calibration=calibration)
    return {"result": _append(args, settings, record)}


def table(path: Path, include_quick: bool = False) -> str:
    """Mean ± std over the seeds of the latest commit's records, per target and run."""
    recs = [r for r in records.load_records(path) if r.get("benchmark") == BENCHMARK
            and (include_quick or not r["settings"].get("quick"))]
    if not recs:
        return "no records"
    commit = recs[-1]["commit"]
    rows: dict[tuple, list[dict[str, Any]]] = {}
    for r in recs:
        if r["commit"] == commit:
            rows.setdefault((r["settings"]["target"], r["settings"]["run"]), []).append(r["result"])
    batch = recs[-1]["settings"].get("latency_batch", 1)
    lines = [f"commit {str(commit)[:7]}, latency at batch {batch}, one thread, CPU time; mean ± std over seeds", "",
             "| latency target | run | seeds | budget | measured latency ratio | FLOPs kept | params kept "
             "| acc fine-tuned | acc val |", "|---|---|---|---|---|---|---|---|---|"]
    for (target, run), res in sorted(rows.items(), key=lambda kv: (-kv[0][0], RUNS.index(kv[0][1]))):
        budget = ", ".join(f"{r['metric']} {r['fraction']:.3f}" for r in res)
        lines.append(f"| {target} | {run} | {len(res)} | {budget} | {_ms(res, lambda r: r['latency']['ratio'])} "
                     f"| {_ms(res, lambda r: r['flops_kept'])} | {_ms(res, lambda r: r['params_kept'])} "
                     f"| {_ms(res, lambda r: r['acc_finetuned'])} | {_ms(res, lambda r: r['acc_val'])} |")
    return "\n".join(lines + _paired(recs, commit))


def _paired(recs: list[dict[str, Any]], commit: str) -> list[str]:
    """Per target, the seeds that have both runs: gdp_latency minus gdp_flops in fine-tuned test
    accuracy (points) and in measured latency ratio, and the verdict on the criterion."""
    by: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in recs:
        if r["commit"] == commit:
            by.setdefault((r["settings"]["target"], r["settings"]["seed"]), {})[r["settings"]["run"]] = r["result"]
    out = []
    for target in sorted({t for t, _ in by}, reverse=True):
        pairs = {seed: runs for (t, seed), runs in sorted(by.items()) if t == target and set(RUNS) <= set(runs)}
        if not pairs:
            continue
        acc = [100 * (p["gdp_latency"]["acc_finetuned"] - p["gdp_flops"]["acc_finetuned"]) for p in pairs.values()]
        gap = [p["gdp_latency"]["latency"]["ratio"] - p["gdp_flops"]["latency"]["ratio"] for p in pairs.values()]
        by_seed = ", ".join(f"s{seed} {a:+.2f} ({g:+.3f})" for seed, a, g in zip(pairs, acc, gap))
        error = f", standard error {statistics.stdev(acc) / len(acc) ** 0.5:.2f}" if len(acc) > 1 else ""
        verdict = "met" if statistics.mean(acc) >= 0 else "not met"
        out.append(f"\n- target {target}: gdp_latency minus gdp_flops, test accuracy in points (latency ratio): "
                   f"{by_seed}; mean {statistics.mean(acc):+.2f}{error}, mean latency gap {statistics.mean(gap):+.3f}. "
                   f"Criterion (gdp_latency's mean at least gdp_flops'): {verdict}.")
    return out


def _ms(results: list[dict[str, Any]], get) -> str:
    values = [float(get(r)) for r in results]
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--targets", nargs="+", type=float, default=[0.5])
    r.add_argument("--latency-batch", type=int, default=16,
                   help="batch of the latency table and of every measurement (16: see the module docstring)")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--width", type=float, default=0.5, help="MobileNetV2 width multiplier")
    r.add_argument("--checkpoint", default=None, help="default: runs/cifar_mobilenetv2_w{width}[_quick].pt")
    r.add_argument("--latency-cache", default=str(ROOT / "runs" / "latency_tables"))
    r.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds per latency measurement")
    r.add_argument("--repeat", type=int, default=5, help="forwards per model per round")
    r.add_argument("--calibration-rounds", type=int, default=4, help="corrections of the FLOPs calibration")
    for key, value in PROTOCOLS["cpu-short"].items():
        r.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    r.add_argument("--heldout2-subset", type=int, default=0)
    r.add_argument("--quick", action="store_true", help="smoke run: 1,000 images, 1 + 1 + 1 epochs (marked quick)")
    r.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    records.add_record_flags(r)
    t = sub.add_parser("table")
    t.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    t.add_argument("--include-quick", action="store_true")
    args = p.parse_args(argv)
    if args.command == "table":
        print(table(args.results, args.include_quick))
        return
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        for key, value in QUICK.items():  # flags given explicitly win (the test's tiny data)
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
    args.checkpoint = args.checkpoint or str(ROOT / "runs" / f"cifar_mobilenetv2_w{args.width:g}"
                                             f"{'_quick' if args.quick else ''}.pt")
    torch.set_num_threads(1)
    cmd_run(args)


if __name__ == "__main__":
    main()
