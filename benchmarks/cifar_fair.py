"""The fair fight on the CPU CIFAR protocol: every method gets the same tuning budget, chosen on
one held-out split, and is reported on a second one that no choice read.

    python benchmarks/cifar_methods.py plan                               # what remains, and how long
    python benchmarks/cifar_methods.py pretrain --data DATA               # the shared checkpoint, once
    python benchmarks/cifar_methods.py tune   --data DATA [--shard 0/2]   # stage 1
    python benchmarks/cifar_methods.py final  --data DATA [--shard 0/2]   # stage 2
    python benchmarks/cifar_methods.py table --fair [--stage tune]

Protocol: ``cpu-short`` (ResNet-20, the shared 15-epoch checkpoint, 3 sparse + 1 fine-tuning
epochs) with the splits of :mod:`benchmarks.cifar_protocol`: training images 0-9,999 train,
10,000-11,999 are ``acc_val``, 12,000-13,999 are ``acc_heldout2``; the full test set.

Stage 1, ``tune``: every setting of :data:`GRID` at target 0.5, seed 0. Every method has the
same number of settings (:data:`SETTINGS_PER_METHOD`): its default, the weights' learning rate
at 0.05 instead of 0.02 (the first ``sparse_epochs``: the sparse phase of the gate methods, the
first part of the one-shot methods' recovery), and the knob that is the method's own rule:

==================== ==========================================================================
gdp                  ``init: uniform`` (every gate at 0.99) instead of the shipped ``magnitude``
polarization, l1,    ``fix_at 0.5`` instead of 0.3: the gates train longer before the cut
polarization_bisect  (lambda: steered by the controller; bisected as published; steered)
magnitude,           ``normalize off``: the raw scores ranked across the network, not each
activation, taylor   group's scores over their mean
tp_group_l1,         ``normalizer off``: Torch-Pruning's global ranking on raw importances, not
tp_bn_scale          its published ``mean`` normalization
==================== ==========================================================================

Each method's setting is chosen by ``acc_val`` alone (the highest; a tie goes to the earlier
setting of the grid), never by test or ``acc_heldout2`` accuracy.

Stage 2, ``final``: each method's chosen setting at targets 0.5 and 0.35 x seeds 0, 1, 2, and
the ``unpruned`` reference (untuned, not a competitor). The run at (0.5, seed 0) is the tuning
run itself (same settings, so it is not run twice): its ``acc_val`` chose it, its
``acc_heldout2`` and test accuracy were not read. ``table --fair`` prints mean ± std on
``acc_heldout2`` and test and the verdict lines (GDP against the best other method, real only
beyond twice the larger spread).

Resumable: every run appends one record (benchmark ``cifar_fair``) through
benchmarks/records.py with the commit, command, machine, date and the checkpoint's sha256 (also
in the settings); a rerun skips every setting the current commit has recorded on a clean tree.
Run the whole campaign from one commit (a worktree left at it): records of another commit are
neither skipped nor chosen from. ``--shard I/N`` splits the jobs between N processes (a
polarization_bisect setting's seeds stay in one shard, so its lambda search runs once).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional

try:
    from benchmarks import cifar_methods, cifar_tables, records
    from benchmarks.cifar_protocol import COMPETITORS, FAIR_PROTOCOL, ONE_SHOT, QUICK, TORCH_PRUNING, split_ranges
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import cifar_methods
    import cifar_tables
    import records
    from cifar_protocol import COMPETITORS, FAIR_PROTOCOL, ONE_SHOT, QUICK, TORCH_PRUNING, split_ranges

BENCHMARK = "cifar_fair"
COMMANDS = ("pretrain", "tune", "final", "plan")
TUNE_TARGET, TUNE_SEED = 0.5, 0
TARGETS, SEEDS = (0.5, 0.35), (0, 1, 2)
REFERENCE = "unpruned"
GATE_METHODS = ("gdp", "polarization", "polarization_bisect", "l1")
LR = {"lr": 0.05}
GRID: dict[str, dict[str, dict[str, Any]]] = {
    "gdp": {"default": {}, "lr-0.05": LR, "init-uniform": {"policy": {"regularizer.init": "uniform"}}},
    **{m: {"default": {}, "lr-0.05": LR, "fix_at-0.5": {"policy": {"regularizer.fix_at": 0.5}}}
       for m in ("polarization", "polarization_bisect", "l1")},
    **{m: {"default": {}, "lr-0.05": LR, "normalize-off": {"normalize": False}} for m in ONE_SHOT},
    **{m: {"default": {}, "lr-0.05": LR, "normalizer-off": {"tp_normalizer": None}} for m in TORCH_PRUNING},
}
SETTINGS_PER_METHOD = 3
#: which methods each knob of a setting acts on (a knob a method ignores would be a wasted setting)
KNOBS = {"lr": COMPETITORS, "finetune_lr": COMPETITORS, "gate_lr": GATE_METHODS, "policy": GATE_METHODS,
         "normalize": ONE_SHOT, "tp_normalizer": TORCH_PRUNING}
#: estimated seconds of one run at one thread (medians of the cpu-short runs in cifar_methods.json;
#: activation and taylor: magnitude's plus their scoring), a lambda search, and pretraining
SECONDS = {"gdp": 300, "polarization": 320, "polarization_bisect": 330, "l1": 320, "magnitude": 310,
           "activation": 320, "taylor": 330, "tp_group_l1": 240, "tp_bn_scale": 240, "unpruned": 400}
BISECTION_SECONDS, PRETRAIN_SECONDS = 750, 1500
#: the record settings that every run of the campaign shares
SHARED = ("pretrain_epochs", "sparse_epochs", "finetune_epochs", "lr", "finetune_lr", "gate_lr", "train_subset",
          "val_subset", "heldout2_subset", "bisect_probes", "quick")


class FairError(Exception):
    """A campaign that cannot go on as asked (a dirty tree, tuning not finished): one line, exit 2."""


class Job(NamedTuple):
    method: str
    setting: str
    target: float
    seed: int


def knobs(method: str, setting: str) -> dict[str, Any]:
    return {} if method == REFERENCE else GRID[method][setting]


def run_args(args: argparse.Namespace, method: str, setting: str) -> argparse.Namespace:
    """``args`` with a setting's knobs applied: what :func:`cifar_methods.run_one` reads."""
    k = knobs(method, setting)
    a = argparse.Namespace(**vars(args))
    a.lr, a.finetune_lr, a.gate_lr = (k.get(key, getattr(args, key)) for key in ("lr", "finetune_lr", "gate_lr"))
    a.policy_set = [f"{key}={json.dumps(value)}" for key, value in k.get("policy", {}).items()]
    a.normalize, a.tp_normalizer = k.get("normalize", True), k.get("tp_normalizer", "mean")
    a.gdp_set, a.bisections = [], {}
    return a


def settings_of(args: argparse.Namespace, job: Job) -> dict[str, Any]:
    """What identifies a run in the records: the job, its knobs, the protocol and the checkpoint."""
    return {**job._asdict(), "knobs": knobs(job.method, job.setting), "protocol": "cpu-short+heldout2",
            **{key: getattr(args, key) for key in SHARED}, "checkpoint_sha256": args.checkpoint_sha256}


def tune_jobs(methods: list[str]) -> list[Job]:
    return [Job(m, s, TUNE_TARGET, TUNE_SEED) for m in GRID if m in methods for s in GRID[m]]


def choose(candidates: dict[str, Optional[dict[str, Any]]]) -> Optional[str]:
    """The setting whose run has the highest ``acc_val`` (the first on a tie), or None while a
    setting has no run. Nothing but ``acc_val`` is read."""
    if not candidates or any(run is None for run in candidates.values()):
        return None
    best = max(run["acc_val"] for run in candidates.values())
    return next(name for name, run in candidates.items() if run["acc_val"] == best)


def final_jobs(chosen: dict[str, Optional[str]], targets: list[float], seeds: list[int]) -> list[Job]:
    """The chosen setting of every method that has one at every target and seed, then the reference."""
    jobs = [Job(m, s, t, seed) for m, s in chosen.items() if s is not None and m != REFERENCE
            for t in targets for seed in seeds]
    return jobs + [Job(REFERENCE, "default", 1.0, seed) for seed in seeds if REFERENCE in chosen]


def _lookup(args: argparse.Namespace):
    """``run(job)``: the current commit's record result for ``job``, or None."""
    def run(job: Job) -> Optional[dict[str, Any]]:
        record = records.recorded(args.results, BENCHMARK, settings_of(args, job))
        return None if record is None else record["result"]
    return run


def chosen_settings(methods: list[str], run) -> dict[str, Optional[str]]:
    """Each method's chosen setting from its tuning runs (None while one is missing); the
    reference has no choice."""
    out = {m: choose({s: run(Job(m, s, TUNE_TARGET, TUNE_SEED)) for s in GRID[m]}) for m in GRID if m in methods}
    return {**out, **({REFERENCE: "default"} if REFERENCE in methods else {})}


def in_shard(jobs: list[Job], shard: tuple[int, int]) -> list[Job]:
    """The jobs of shard ``i`` of ``n``: whole (method, setting, target) groups, round robin."""
    i, n = shard
    groups = sorted({(j.method, j.setting, j.target) for j in jobs}, key=lambda g: [j[:3] for j in jobs].index(g))
    mine = {g for k, g in enumerate(groups) if k % n == i}
    return [j for j in jobs if (j.method, j.setting, j.target) in mine]


def estimate(jobs: list[Job], searched=lambda job: None) -> float:
    """Seconds at one thread for ``jobs``: a run each and one lambda search per
    polarization_bisect (setting, target) that ``searched(job)`` has no search recorded for."""
    searches = {(j.setting, j.target) for j in jobs if j.method == "polarization_bisect" and searched(j) is None}
    return sum(SECONDS[j.method] for j in jobs) + BISECTION_SECONDS * len(searches)


def recorded_search(run, seeds: list[int]):
    """``searched(job)``: the lambda search recorded by any seed's run of ``job``'s method,
    setting and target at this commit, or None."""
    def searched(job: Job) -> Optional[dict[str, Any]]:
        for seed in dict.fromkeys([TUNE_SEED, *seeds]):
            result = run(job._replace(seed=seed))
            if result is not None and result.get("lambda_search"):
                return result["lambda_search"]
        return None
    return searched


def execute(args: argparse.Namespace, jobs: list[Job], stage: str) -> int:
    """Run every job of ``jobs`` not yet recorded, appending a record after each; the count run."""
    run, done = _lookup(args), 0
    searched = recorded_search(run, args.seeds)
    for job in jobs:
        if not args.rerun and run(job) is not None:
            continue
        a = run_args(args, job.method, job.setting)
        search = searched(job) if job.method == "polarization_bisect" else None
        if search is not None:
            a.bisections[job.target] = search
        print(f"{stage}: {job.method} [{job.setting}] t={job.target:g} seed {job.seed}", flush=True)
        result = cifar_methods.run_one(a, job.method, job.target, job.seed)
        result.update(quick=args.quick, checkpoint=str(args.checkpoint), stage=stage, setting=job.setting)
        print(json.dumps({k: v for k, v in result.items() if k not in ("trajectory", "steps")}), flush=True)
        records.append_record(args.results, records.new_record(BENCHMARK, settings_of(args, job), result,
                                                               seed=job.seed, checkpoints=[args.checkpoint],
                                                               note=args.note))
        done += 1
    return done


def _same_checkout() -> None:
    """The gdp_graph that runs is this checkout's (the one whose commit the records name), not
    another worktree's that an editable install points at."""
    import gdp_graph

    where = Path(gdp_graph.__file__).resolve().parent
    if not where.is_relative_to(records.ROOT):
        raise FairError(f"gdp_graph is imported from {where}, not from this checkout {records.ROOT} whose commit the "
                        f"records would name: run with PYTHONPATH={records.ROOT}")


def prepare(args: argparse.Namespace, *, need_checkpoint: bool) -> None:
    """The protocol's (or ``--quick``'s) settings on ``args``, the checkpoint (pretrained when
    missing and ``need_checkpoint``) and its sha256; a full campaign's runs refuse a dirty tree."""
    for key, value in {**FAIR_PROTOCOL, **(QUICK if args.quick else {})}.items():
        setattr(args, key, value)
    if args.checkpoint is None:
        args.checkpoint = "runs/pretrained_quick.pt" if args.quick else str(cifar_methods.DEFAULT_CHECKPOINT)
    if args.results is None:
        args.results = Path("runs/cifar_fair_quick.json") if args.quick else cifar_methods.DEFAULT_RESULTS
    if args.gate_lr is None:
        from gdp_graph.gates.model import DEFAULT_GATE_LR
        args.gate_lr = DEFAULT_GATE_LR
    state = records.git_state()
    if not (args.quick or args.dry_run or args.command == "plan") and state["dirty"] is not False:
        raise FairError(f"the tree differs from commit {state['commit']}: records of a dirty tree are never "
                        "resumed or chosen from; run the campaign from a clean worktree")
    if not (args.dry_run or args.command == "plan"):
        _same_checkout()
    if need_checkpoint and not Path(args.checkpoint).exists():
        cifar_methods.pretrain(args)
    exists = Path(args.checkpoint).exists()
    args.checkpoint_sha256 = records.sha256_file(args.checkpoint) if exists else None


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} CPU-hours at one thread"


def _tune(args: argparse.Namespace) -> list[Job]:
    return in_shard(tune_jobs(args.methods), args.shard)


def _final(args: argparse.Namespace, chosen: dict[str, Optional[str]]) -> list[Job]:
    return in_shard(final_jobs(chosen, args.targets, args.seeds), args.shard)


def plan_lines(args: argparse.Namespace) -> list[str]:
    """What remains of the campaign and its estimated time at one thread."""
    state = records.git_state()
    run = _lookup(args) if args.checkpoint_sha256 else (lambda job: None)
    searched = recorded_search(run, args.seeds)
    tune = _tune(args)
    tune_left = [j for j in tune if run(j) is None]
    chosen = chosen_settings(args.methods, run)
    final = _final(args, chosen)
    final_left = [j for j in final if run(j) is None]
    waiting = [m for m, s in chosen.items() if s is None]
    # a waiting method's final runs: every target and seed but the tuning run, and its lambda searches
    later = [Job(m, "?", t, s) for m in waiting for t in args.targets for s in args.seeds
             if (t, s) != (TUNE_TARGET, TUNE_SEED)]
    later_s = estimate(later) - BISECTION_SECONDS * ("polarization_bisect" in waiting)  # the 0.5 search is tuning's
    pretrain_s = 0 if args.checkpoint_sha256 else PRETRAIN_SECONDS
    total = estimate(tune_left, searched) + estimate(final_left, searched) + later_s + pretrain_s
    lines = [f"commit {state['commit']} ({'clean' if state['dirty'] is False else 'DIRTY: nothing resumes'}); "
             f"results {args.results}; checkpoint {args.checkpoint} "
             f"({'sha256 ' + args.checkpoint_sha256[:12] if args.checkpoint_sha256 else 'missing: pretrained first'})",
             f"grid: {SETTINGS_PER_METHOD} settings for each of {len([m for m in GRID if m in args.methods])} methods, "
             f"at target {TUNE_TARGET:g}, seed {TUNE_SEED}, chosen on acc_val",
             f"tune: {len(tune)} runs, {len(tune) - len(tune_left)} recorded, {len(tune_left)} remain "
             f"(~{_hours(estimate(tune_left, searched))})",
             "chosen: " + ", ".join(f"{m} {s or '(tuning unfinished)'}" for m, s in chosen.items() if m != REFERENCE),
             f"final: {len(final)} runs known, {len(final) - len(final_left)} recorded, {len(final_left)} remain "
             f"(~{_hours(estimate(final_left, searched))})"
             + (f"; after tuning, {len(later)} more for {', '.join(waiting)} (~{_hours(later_s)})" if waiting else ""),
             f"total remaining: ~{_hours(total)}"
             + (f" (pretraining included: ~{_hours(pretrain_s)})" if pretrain_s else "")
             + ("; the estimates are the full protocol's, not --quick's" if args.quick else "")
             + (f"; shard {args.shard[0]}/{args.shard[1]}" if args.shard[1] > 1 else "")]
    return lines


def cmd_tune(args: argparse.Namespace) -> None:
    jobs = _tune(args)
    if args.dry_run:
        print("\n".join(plan_lines(args)))
        return
    print(f"tune: {execute(args, jobs, 'tune')} runs made")


def cmd_final(args: argparse.Namespace) -> None:
    chosen = chosen_settings(args.methods, _lookup(args))
    waiting = [m for m, s in chosen.items() if s is None]
    if args.dry_run:
        print("\n".join(plan_lines(args)))
        return
    if waiting:
        raise FairError(f"final: the tuning of {', '.join(waiting)} is not finished (run tune first, or leave them "
                        "out with --methods); plan shows what remains")
    print("chosen on acc_val: " + ", ".join(f"{m} {s}" for m, s in chosen.items()))
    print(f"final: {execute(args, _final(args, chosen), 'final')} runs made")


def commit_runs(path: Path, commit: Optional[str] = None, include_quick: bool = False):
    """``(commit, run, shared)``: the campaign's records of ``commit`` (a prefix; default: the
    latest record's) on a clean tree with the latest record's protocol and checkpoint,
    ``run(job)`` giving a job's latest result among them (or None), and those shared settings."""
    mine = [r for r in records.load_records(path) if r.get("benchmark") == BENCHMARK and r.get("dirty") is False
            and (include_quick or not r["settings"].get("quick"))]
    if commit is not None:
        mine = [r for r in mine if (r.get("commit") or "").startswith(commit)]
    if not mine:
        raise FairError(f"{path}: no cifar_fair records{f' of commit {commit}' if commit else ''} "
                        "(run: python benchmarks/cifar_methods.py tune --data ...)")
    last = mine[-1]
    shared = {k: last["settings"].get(k) for k in (*SHARED, "checkpoint_sha256", "protocol")}
    by = {}
    for r in mine:
        s = r["settings"]
        if r["commit"] == last["commit"] and all(s.get(k) == v for k, v in shared.items()):
            by[Job(s["method"], s["setting"], s["target"], s["seed"])] = r["result"]
    return last["commit"], by.get, shared


def fair_tables(path: Path, stage: str, commit: Optional[str] = None, include_quick: bool = False) -> str:
    """The tuning table (``stage`` tune), the final table (``final``) or the final stage's gates at
    the cut (``cut``) of the campaign's records."""
    commit, run, shared = commit_runs(path, commit, include_quick)
    chosen = chosen_settings(list(GRID), run)
    if stage == "tune":
        rows = [{"method": m, "setting": s, "run": run(Job(m, s, TUNE_TARGET, TUNE_SEED)), "chosen": chosen[m] == s}
                for m in GRID for s in GRID[m]]
        return f"Tuning runs of commit {commit[:12]} (target {TUNE_TARGET:g}, seed {TUNE_SEED}):\n\n" + \
            cifar_tables.tuning_table(rows)
    chosen[REFERENCE] = "default"
    runs = [r for job in final_jobs(chosen, list(TARGETS), list(SEEDS)) if (r := run(job)) is not None]
    if stage == "cut":
        return cifar_tables.cut_table(runs, commit)
    ranges = split_ranges(shared["train_subset"], shared["val_subset"], shared["heldout2_subset"])
    return cifar_tables.fair_table(runs, {m: s for m, s in chosen.items() if s}, commit, ranges)


def cut_figure(path: Path, out: Path, commit: Optional[str] = None) -> None:
    """The final stage's gate trajectories as a picture (``table --fair --figure OUT``)."""
    commit, run, _ = commit_runs(path, commit)
    chosen = chosen_settings(list(GRID), run)
    runs = [r for job in final_jobs(chosen, list(TARGETS), list(SEEDS)) if (r := run(job)) is not None]
    cifar_tables.cut_figure(runs, str(out))


def grid_table() -> str:
    """The tuning grid as a markdown table: every method's settings and what each changes."""
    def show(k: dict[str, Any]) -> str:
        flat = {**{key: v for key, v in k.items() if key != "policy"}, **k.get("policy", {})}
        return ", ".join(f"`{key} {json.dumps(v)}`" for key, v in flat.items()) or "the method's default"

    lines = ["| method | " + " | ".join(f"setting {i + 1}" for i in range(SETTINGS_PER_METHOD)) + " |",
             "|---|" + "---|" * SETTINGS_PER_METHOD]
    lines += [f"| {m} | " + " | ".join(f"{name}: {show(k)}" for name, k in GRID[m].items()) + " |" for m in GRID]
    return "\n".join(lines)


def _shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(i), int(n)


def add_commands(sub) -> None:
    """The ``pretrain``, ``tune``, ``final``, ``plan`` and ``grid`` subcommands of cifar_methods.py."""
    sub.add_parser("grid", help="print the tuning grid")
    helps = {"pretrain": "train the shared checkpoint if it is missing (before starting shards side by side)",
             "tune": "stage 1: every method's settings at target 0.5, seed 0",
             "final": "stage 2: each method's setting chosen on acc_val, at every target and seed",
             "plan": "how many runs of the campaign remain, and the estimated time"}
    for name in COMMANDS:
        c = sub.add_parser(name, help=helps[name])
        c.add_argument("--data", required=name != "plan", help="CIFAR-10 (python version archive or folder)")
        if name == "pretrain":
            c.set_defaults(methods=[], targets=[], seeds=[], shard=(0, 1), bisect_probes=0, rerun=False, note=None)
            c.add_argument("--checkpoint", default=None, help="default: the protocol's (quick: its own)")
            c.add_argument("--quick", action="store_true", help="the quick checkpoint")
            c.set_defaults(results=None, gate_lr=None, dry_run=False)
            continue
        c.add_argument("--methods", nargs="+", default=[*GRID, REFERENCE], choices=[*GRID, REFERENCE])
        c.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
        c.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
        c.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                       help="run shard I of N (whole method/setting/target groups, round robin)")
        c.add_argument("--checkpoint", default=None, help="default: the protocol's (quick: its own)")
        c.add_argument("--results", type=Path, default=None,
                       help="default: benchmarks/results/cifar_methods.json (quick: runs/cifar_fair_quick.json)")
        c.add_argument("--gate-lr", type=float, default=None)
        c.add_argument("--bisect-probes", type=int, default=8, help="polarization_bisect: probes per lambda search")
        c.add_argument("--quick", action="store_true", help="smoke run: 1k images, 1 + 1 epochs (marked quick)")
        c.add_argument("--dry-run", action="store_true", help="print the plan instead of running")
        records.add_record_flags(c)


def dispatch(args: argparse.Namespace) -> None:
    """Run a campaign command; a :class:`FairError` ends it with one line and exit status 2."""
    if args.command == "grid":
        print(grid_table())
        return
    try:
        prepare(args, need_checkpoint=args.command != "plan" and not args.dry_run)
        if args.command == "plan":
            print("\n".join(plan_lines(args)))
        elif args.command == "pretrain":
            print(f"checkpoint {args.checkpoint}: sha256 {args.checkpoint_sha256}")
        else:
            {"tune": cmd_tune, "final": cmd_final}[args.command](args)
    except (FairError, records.RecordsError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
