"""GDP against the baselines on CIFAR-10 at equal FLOPs, on the same graph and schedule.

    python benchmarks/cifar_methods.py run --protocol cpu-short --data ../shared/data/cifar10/cifar-10-python.tar.gz \
        [--methods gdp polarization l1 magnitude tp_group_l1 tp_bn_scale] [--targets 0.5 0.35] [--seeds 0 1 2] [--quick]
    python benchmarks/cifar_methods.py table [--results benchmarks/results/cifar_methods.json]
    python benchmarks/cifar_methods.py plan|pretrain|tune|final|grid ...; table --fair   # the fair campaign: cifar_fair.py

Protocol (CPU): ResNet-20; the first 10,000 CIFAR-10 training images train (images 10,000 to
11,999 are a held-out split, reported as ``acc_val``; nothing here is selected on the test
set; with ``heldout2_subset``, images 12,000-13,999 are a second one, ``acc_heldout2``: see
cifar_protocol.py); the full 10,000-image test set. One pretrained checkpoint shared by every
run (trained once by ``pretrain`` and cached under ``runs/``, not committed). After pretraining every method
gets the same ``--sparse-epochs + --finetune-epochs`` epochs with the same SGD (momentum 0.9,
Nesterov, weight decay 5e-4, batch 128, augmentation), a cosine schedule from ``--lr`` over the
first part and from ``--finetune-lr`` over the second:

``gdp``          smoothed-L0 gates, FLOPs-priced ``gdp`` regularizer, lambda steered to the
                 target, gates fixed at ``fix_at`` and cut to the budget (the library default).
``polarization`` Zhuang et al. 2020 on the same gates: ``t = 1.2``, the network-wide mean,
                 gates clamped to [0, 1]; lambda steered by the same controller and the same
                 cut to the budget (the published lambda rule: ``polarization_bisect``).
``polarization_bisect``  the same gates and penalty with lambda as published: constant, found
                 by bisection over log10(lambda) in [-2, 2] against the FLOPs kept by the gates
                 <= 0.5 at the cut (each probe trains from the checkpoint until the cut, seed
                 0, ``--bisect-probes`` probes, stopping within 0.01 of the target); every seed
                 then trains with that lambda and the cut trims to the budget like the others
                 (the probes are recorded with the run).
``l1``           network slimming on the gates: L1, then a global threshold (the lowest gates
                 cut until the budget is met).
``magnitude``    one shot (gdp_graph.importance): each unit scored by the plain L2 norm of its
                 weights over every member of its group (the rows that produce it, its norm
                 parameters, the input columns that consume it; records before this importance
                 package used the squared norm of the consuming columns only), each group's
                 scores over their mean, the lowest cut to the budget from the pretrained
                 weights (``importance.one_shot_plan``), then all epochs fine-tune.
``activation``   the same with Minitron's activation importance: mean |activation| per unit at
                 its gate sites over ``SCORE_BATCHES`` training batches.
``taylor``       the same with first-order Taylor importance: |dL/dg| at gates fixed to 1,
                 averaged over ``SCORE_BATCHES`` training batches.
``tp_group_l1``  Torch-Pruning (the ``bench`` extra), one shot like ``magnitude``: its published
                 CIFAR ResNet-56 recipe (global channel ranking, 400 progressive steps until the
                 FLOPs target, classifier kept) with its group L1 importance; see tp_baseline.py.
``tp_bn_scale``  the same with its BN-scale importance and BNScalePruner (no sparse-learning
                 phase: one shot).
``unpruned``     the reference, not a competitor: the checkpoint trained on for the same epochs
                 without pruning (recorded once per seed as target 1).

FLOPs are measured with FlopCounterMode on the finalized, physically smaller model. Each run
appends one record (with its per-epoch trajectory) to the results JSON; ``table`` prints the
mean +- std per method and target (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    from benchmarks import cifar_protocol, records
    from benchmarks.cifar_protocol import COMPETITORS, METHODS, ONE_SHOT, PROTOCOLS, SCORE_BATCHES, TORCH_PRUNING
    from benchmarks.cifar_tables import BENCHMARK, all_runs, table, verdicts
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import cifar_protocol
    import records
    from cifar_protocol import COMPETITORS, METHODS, ONE_SHOT, PROTOCOLS, SCORE_BATCHES, TORCH_PRUNING
    from cifar_tables import BENCHMARK, all_runs, table, verdicts

__all__ = ["BENCHMARK", "COMPETITORS", "METHODS", "ONE_SHOT", "PROTOCOLS", "SCORE_BATCHES", "all_runs", "bisect_lambda",
           "constant_lambda", "controller_steps", "main", "pretrain", "run_one", "table", "verdicts"]

DEFAULT_RESULTS = Path(__file__).with_name("results") / "cifar_methods.json"
DEFAULT_CHECKPOINT = Path("runs/pretrained_r20_10k_e15.pt")


def _loaders(args, seed: int) -> cifar_protocol.Loaders:
    return cifar_protocol.loaders(args.data, args.train_subset, args.val_subset, seed,
                                  getattr(args, "heldout2_subset", 0))


def _epochs(net, loader, n: int, lr: float, *, optimizer=None, extra_loss=None, on_step=None, on_epoch=None) -> None:
    from gdp_graph.recipes.cifar10.training import cosine_schedule, make_optimizer, train_one_epoch

    if n <= 0:
        return
    opt = optimizer if optimizer is not None else make_optimizer(net, lr)
    sched = cosine_schedule(opt.weights if hasattr(opt, "weights") else opt, n * len(loader))
    step = 0
    for epoch in range(n):
        loader.set_epoch(epoch)
        stats = train_one_epoch(net, loader, opt, device="cpu", extra_loss=extra_loss, on_step=on_step,
                                scheduler=sched, start_step=step)
        step = stats["global_step"]
        if on_epoch is not None:
            on_epoch(epoch, stats)


def _policy(method: str, target: float, overrides: tuple[str, ...] = ()):
    """The shipped ``cifar_resnet`` policy for ``method`` at ``target``; ``overrides`` are
    ``dotted.key=yaml-value`` settings applied on top (``--gdp-set``, recorded with the run)."""
    from gdp_graph.policy import load_policy, policy_from_dict, set_override, switch_regularizer

    data = load_policy("cifar_resnet").to_dict()
    data["target"]["fraction"] = target
    if method != "gdp":
        switch_regularizer(data, method)
        data["regularizer"].pop("reopen", None)  # a smoothed-L0 setting: the baselines keep their gates
    for item in overrides:
        set_override(data, item)
    return policy_from_dict(data, source=f"cifar_resnet for {method}", name="cifar_resnet")


def _train_until_fixed(gated, train, args) -> None:
    """The sparse phase of ``gated`` up to its cut only (a bisection probe)."""
    from gdp_graph.recipes.cifar10.gdp_phase import GateOptimizer
    from gdp_graph.recipes.cifar10.training import cosine_schedule, train_one_epoch

    opt = GateOptimizer(gated, args.lr, args.gate_lr)
    sched = cosine_schedule(opt.weights, args.sparse_epochs * len(train))
    step, epoch = 0, 0
    while not bool(gated.fixed):
        train.set_epoch(epoch)
        stats = train_one_epoch(gated, train, opt, device="cpu", extra_loss=gated.penalty, on_step=lambda s: gated.step(),
                                scheduler=sched, start_step=step, max_steps=gated.fix_step - step)
        step, epoch = stats["global_step"], epoch + 1


def constant_lambda(policy, lam: float):
    """``policy`` with lambda held at ``lam`` (a controller clamped to it: the cut still trims to
    the budget)."""
    from gdp_graph.policy import policy_from_dict

    data = policy.to_dict()
    data["regularizer"]["lambda"] = lam
    data["regularizer"]["lambda_controller"].update(min=lam, max=lam)
    return policy_from_dict(data, source=f"{policy.source}, lambda {lam:.4g}", name=policy.name)


def bisect_lambda(args, target: float, probe=None) -> dict[str, Any]:
    """Polarization's lambda by bisection over log10(lambda) in [-2, 2]: each probe trains from
    the checkpoint (seed 0) until the cut and reads the fraction kept by the gates <= 0.5 there;
    more kept than the target means more lambda. Stops within 0.01 of the target or after
    ``args.bisect_probes`` probes; returns the lambda whose fraction came closest and the probes."""
    probe = probe or (lambda lam: _probe(args, target, lam))
    lo, hi, probes = -2.0, 2.0, []
    for _ in range(args.bisect_probes):
        mid = (lo + hi) / 2
        kept = probe(10 ** mid)
        probes.append({"lambda": 10 ** mid, "kept": kept})
        print(f"  bisection t={target}: lambda {10 ** mid:.4g} keeps {kept:.4f}", flush=True)
        if abs(kept - target) <= 0.01:
            break
        lo, hi = (mid, hi) if kept > target else (lo, mid)
    best = min(probes, key=lambda p: abs(p["kept"] - target))
    return {"lambda": best["lambda"], "kept": best["kept"], "probes": probes}


def _probe(args, target: float, lam: float) -> float:
    from gdp_graph.gates.attach import attach
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet

    torch.manual_seed(0)
    train = _loaders(args, 0).train
    model = cifar_resnet(20)
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    policy = _policy("polarization", target, tuple(getattr(args, "policy_set", ())))
    gated = attach(model, policy=constant_lambda(policy, lam),
                   example_inputs=torch.randn(2, 3, 32, 32), total_steps=args.sparse_epochs * len(train),
                   steps_per_epoch=len(train), gate_lr=args.gate_lr)
    _train_until_fixed(gated, train, args)
    return float(gated.fix_report["hard_before"])


def controller_steps(gated) -> list[list[float]]:
    """The per-iteration trajectory until the gates were fixed, as rows ``[step, soft fraction,
    lambda]`` (4 significant digits): where a collapse or a wind-up shows (the per-epoch
    trajectory misses it when the cut falls inside the first epochs)."""
    if gated.controller is None:
        return []
    return [[h["step"], float(f"{h['soft_fraction']:.4g}"), float(f"{h['lambda']:.4g}")]
            for h in gated.controller.history]


def _overrides(args, method: str) -> tuple[str, ...]:
    """The policy overrides of this run: ``policy_set`` (a tuning setting's, any gate method)
    and ``--gdp-set`` (gdp only)."""
    return tuple(getattr(args, "policy_set", ())) + (tuple(args.gdp_set) if method == "gdp" else ())


def _prune_once(args, method: str, model, x1, target: float, train, seed: int, record: dict[str, Any]):
    """The model that a method without a sparse phase trains on: the checkpoint itself
    (``unpruned``), or its one-shot cut to ``target`` (our importance or Torch-Pruning's).
    ``args.normalize`` (default true): our one-shot scores are divided by their group's mean
    before the global ranking; ``args.tp_normalizer`` (default ``mean``): Torch-Pruning's."""
    import gdp_graph as G
    import torch.nn.functional as F

    from gdp_graph.policy import resolve

    if method == "unpruned":
        return model
    if method in TORCH_PRUNING:
        try:
            from benchmarks import tp_baseline
        except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
            import tp_baseline
        record["torch_pruning"] = tp_baseline.torch_pruning_version()  # a clear ImportError without the extra
        return tp_baseline.prune_with_torch_pruning(model, x1, target, method.removeprefix("tp_"),
                                                    normalizer=getattr(args, "tp_normalizer", "mean"))
    from gdp_graph.importance import one_shot_plan, score_units

    analysis = G.analyze(model, x1)
    resolution = resolve(_policy("gdp", target, _overrides(args, method)), analysis.groups, analysis.blocks)
    train.set_epoch(seed)
    scores = score_units(analysis, method, train, lambda out, batch: F.cross_entropy(out, batch[1]),
                         max_batches=SCORE_BATCHES)
    plan, _ = one_shot_plan(analysis, scores, resolution, target, normalize=getattr(args, "normalize", True))
    return G.rewrite(analysis, plan)


def _prune_gated(args, method: str, model, target: float, train, test, seed: int, record: dict[str, Any]):
    """The sparse phase of a gate method (gdp, polarization, its bisected lambda, l1), the cut
    and the finalized, physically smaller model; the per-epoch trajectory goes into ``record``."""
    from gdp_graph.gates.attach import attach
    from gdp_graph.gates.finalize import finalize
    from gdp_graph.recipes.cifar10.gdp_phase import GateOptimizer
    from gdp_graph.recipes.cifar10.training import evaluate

    policy = _policy(method.removesuffix("_bisect"), target, _overrides(args, method))
    if method == "polarization_bisect":
        search = args.bisections.get(target) or bisect_lambda(args, target)
        args.bisections[target] = search
        record["lambda_search"] = search
        policy = constant_lambda(policy, search["lambda"])
    gated = attach(model, policy=policy, example_inputs=torch.randn(2, 3, 32, 32),
                   total_steps=args.sparse_epochs * len(train), steps_per_epoch=len(train), gate_lr=args.gate_lr)
    if gated.init_pending:  # a start scored on data (activation, taylor); magnitude is applied by attach()
        import torch.nn.functional as F
        from gdp_graph.importance import init_gates
        init_gates(gated, train, lambda out, batch: F.cross_entropy(out, batch[1]))

    def log(e: int, st: dict) -> None:
        g = gated.report()
        record["trajectory"].append({"epoch": e + 1, "train_acc": st["accuracy"], **{
            k: g[k] for k in ("lambda", "epsilon", "hard_fraction", "soft_fraction", "zero", "middle", "fixed")}})
        print(f"  {method} t={target} s={seed} epoch {e + 1}: acc {st['accuracy']:.3f} lambda {g['lambda']:.3g} "
              f"kept {g['hard_fraction']:.3f} soft {g['soft_fraction']:.3f} zero {g['zero']:.2f}", flush=True)

    _epochs(gated, train, args.sparse_epochs, args.lr, optimizer=GateOptimizer(gated, args.lr, args.gate_lr),
            extra_loss=gated.penalty, on_step=lambda s: gated.step(), on_epoch=log)
    record["acc_gated"] = evaluate(gated, test, device="cpu")["accuracy"]
    record["fix"] = gated.fix_report
    record["steps"] = controller_steps(gated)
    pruned, report = finalize(gated)
    record["acc_finalized"] = evaluate(pruned, test, device="cpu")["accuracy"]
    record["finalize_max_rel_diff"] = report.check.max_rel_diff
    return pruned


def run_one(args, method: str, target: float, seed: int) -> dict[str, Any]:
    """One run of ``method`` at ``target`` with ``seed`` from the checkpoint: its cut (one shot
    or after the sparse phase), the shared epochs, and the accuracies on the test set
    (``acc_finetuned``), the held-out split (``acc_val``) and, with ``args.heldout2_subset``,
    the second held-out split (``acc_heldout2``)."""
    from gdp_graph.graph.cost import model_cost
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
    from gdp_graph.recipes.cifar10.training import evaluate

    torch.manual_seed(seed)
    data = _loaders(args, seed)
    model = cifar_resnet(20)
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    x1 = torch.randn(1, 3, 32, 32)
    before = model_cost(model, (x1,))
    record: dict[str, Any] = {"method": method, "target": target, "seed": seed, "trajectory": []}
    started = time.perf_counter()
    if method == "unpruned" or method in ONE_SHOT or method in TORCH_PRUNING:
        net = _prune_once(args, method, model, x1, target, data.train, seed, record)
        record["acc_gated"] = record["acc_finalized"] = evaluate(net, data.test, device="cpu")["accuracy"]
        _epochs(net, data.train, args.sparse_epochs, args.lr,
                on_epoch=lambda e, st: record["trajectory"].append({"epoch": e + 1, "train_acc": st["accuracy"]}))
    else:
        net = _prune_gated(args, method, model, target, data.train, data.test, seed, record)
    _epochs(net, data.train, args.finetune_epochs, args.finetune_lr)
    after = model_cost(net, (x1,))
    record.update(acc_finetuned=evaluate(net, data.test, device="cpu")["accuracy"],
                  acc_val=evaluate(net, data.val, device="cpu")["accuracy"],
                  flops_kept=after.flops / before.flops, params_kept=after.params / before.params,
                  seconds=time.perf_counter() - started)
    if data.heldout2 is not None:
        record["acc_heldout2"] = evaluate(net, data.heldout2, device="cpu")["accuracy"]
    return record


def pretrain(args) -> None:
    from gdp_graph.recipes.cifar10.models.cifar_resnet import cifar_resnet
    from gdp_graph.recipes.cifar10.training import evaluate

    torch.manual_seed(0)
    data = _loaders(args, 0)
    train, test = data.train, data.test
    model = cifar_resnet(20)
    _epochs(model, train, args.pretrain_epochs, 0.1)
    Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.checkpoint)
    print(f"pretrained accuracy {evaluate(model, test, device='cpu')['accuracy']:.4f} -> {args.checkpoint}")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"runs": []}


def cmd_run(args) -> None:
    if args.quick:
        args.sparse_epochs, args.finetune_epochs, args.train_subset, args.val_subset = 1, 1, 1000, 500
        args.pretrain_epochs = 1
        if args.checkpoint == str(DEFAULT_CHECKPOINT):
            args.checkpoint = "runs/pretrained_quick.pt"
    if not Path(args.checkpoint).exists():
        pretrain(args)
    path = Path(args.results)
    jobs = [(m, t, s) for t in args.targets for s in args.seeds for m in args.methods if m != "unpruned"]
    jobs += [("unpruned", 1.0, s) for s in args.seeds if "unpruned" in args.methods]
    for method, target, seed in jobs:
        settings = {"method": method, "target": target, "seed": seed, "quick": args.quick,
                    **{k: getattr(args, k) for k in ("sparse_epochs", "finetune_epochs", "lr", "finetune_lr", "gate_lr",
                                                     "train_subset", "val_subset", "gdp_set")},
                    **({"heldout2_subset": args.heldout2_subset} if args.heldout2_subset else {})}
        if not args.rerun and records.recorded(path, BENCHMARK, settings):
            continue
        record = run_one(args, method, target, seed)
        record.update(quick=args.quick, checkpoint=str(args.checkpoint))
        print(json.dumps({k: v for k, v in record.items() if k not in ("trajectory", "steps")}), flush=True)
        records.append_record(path, records.new_record(BENCHMARK, settings, record, seed=seed,
                                                       checkpoints=[args.checkpoint], note=args.note))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    r.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.35])
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    r.add_argument("--pretrain-epochs", type=int, default=15)
    r.add_argument("--sparse-epochs", type=int, default=6)
    r.add_argument("--finetune-epochs", type=int, default=2)
    r.add_argument("--lr", type=float, default=0.02)
    r.add_argument("--finetune-lr", type=float, default=0.01)
    r.add_argument("--gate-lr", type=float, default=None)
    r.add_argument("--train-subset", type=int, default=10000)
    r.add_argument("--val-subset", type=int, default=2000)
    r.add_argument("--heldout2-subset", type=int, default=0,
                   help="images after the held-out split kept as a second one no selection reads (acc_heldout2)")
    r.add_argument("--gdp-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a policy key for the gdp method only, e.g. regularizer.fix_at=0.3 (repeatable)")
    r.add_argument("--bisect-probes", type=int, default=8, help="polarization_bisect: probes per target")
    r.add_argument("--results", default=str(DEFAULT_RESULTS))
    r.add_argument("--quick", action="store_true", help="smoke run: 1k images, 1 + 1 epochs (marked quick)")
    r.add_argument("--protocol", choices=sorted(PROTOCOLS),
                   help="named settings (cpu-short: the documented table's); flags given next to it win")
    records.add_record_flags(r)
    _fair().add_commands(sub)
    t = sub.add_parser("table")
    t.add_argument("--results", default=None, help=f"default: {DEFAULT_RESULTS}")
    t.add_argument("--include-quick", action="store_true")
    t.add_argument("--fair", action="store_true", help="the fair campaign's table (tune and final)")
    t.add_argument("--stage", choices=("tune", "final", "cut"), default="final",
                   help="with --fair: which stage (cut: the final stage's gates at the cut)")
    t.add_argument("--figure", type=Path, default=None,
                   help="with --fair: also draw the final stage's gate trajectories to this PNG")
    t.add_argument("--commit", default=None, help="with --fair: the records of this commit (default: the latest's)")
    args = p.parse_args(argv)
    if args.command == "run" and args.protocol:
        r.set_defaults(**PROTOCOLS[args.protocol])
        args = p.parse_args(argv)
    if args.command == "run":
        from gdp_graph.gates.model import DEFAULT_GATE_LR
        args.gate_lr = DEFAULT_GATE_LR if args.gate_lr is None else args.gate_lr
        args.bisections = {}  # target -> polarization's lambda search, shared by the seeds
        cmd_run(args)
    elif args.command == "table":
        results = Path(args.results or DEFAULT_RESULTS)
        if not args.fair:
            print(table(_load(results), args.include_quick))
            return
        fair = _fair()
        try:
            print(fair.fair_tables(results, args.stage, args.commit, args.include_quick))
            if args.figure:
                fair.cut_figure(results, args.figure, args.commit)
        except fair.FairError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    else:
        _fair().dispatch(args)


def _fair():
    """benchmarks/cifar_fair.py (imported late: it imports this module)."""
    try:
        from benchmarks import cifar_fair
    except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
        import cifar_fair
    return cifar_fair


if __name__ == "__main__":
    main()
