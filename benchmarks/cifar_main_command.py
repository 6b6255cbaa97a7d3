"""The README main command (``gdp-graph train``, short preset) for several settings and seeds,
one record per run, so that settings are compared on the command's own held-out split.

    OMP_NUM_THREADS=1 python benchmarks/cifar_main_command.py --data ../shared/data/cifar10/cifar-10-python.tar.gz \
        --checkpoint runs/pre_s0.pt --seeds 0 --variant "" --variant "--regularizer polarization" \
        --variant "--set regularizer.init=taylor"
    python benchmarks/cifar_main_command.py --table
    python benchmarks/cifar_main_command.py --widths      # how each method spread its cut over the groups
    python benchmarks/cifar_main_command.py --pair "magnitude [7ca70a3, 1 threads]" "7ca70a3, 1 threads], compare polarization"
    python benchmarks/cifar_main_command.py --paired "magnitude [7ca70a3, 1 threads]"   # every long row against that run

A variant is extra ``gdp-graph train`` arguments (the empty string: the command as shipped).
Each run is ``gdp-graph train --data D --seed S --json [--checkpoint C] VARIANT``, in a
subprocess with the environment's thread settings (``OMP_NUM_THREADS``); its report's
accuracies (test and held-out, pretrained / finalized / fine-tuned / unpruned), FLOPs kept, the
cut (``fix``) and wall time go to ``benchmarks/results/cifar_main_command.json`` through
benchmarks/records.py. With ``--checkpoint`` the pretrained weights are shared (no pretraining
and, as the command does, no unpruned comparison); without it every run pretrains with its seed.
Settings are chosen on the held-out split only; test accuracy is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    from benchmarks import records
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import records

BENCHMARK = "cifar_main_command"
RESULTS = Path(__file__).with_name("results") / "cifar_main_command.json"
KEYS = ("acc_pretrained", "acc_finalized", "acc_finetuned", "acc_unpruned_same_epochs")


def run(data: str, seed: int, checkpoint: str | None, variant: str, log: Path) -> dict[str, Any]:
    """One ``gdp-graph train`` run; its report, reduced to what the table and the note need."""
    cmd = [sys.executable, "-m", "gdp_graph.cli.main", "train", "--data", data, "--seed", str(seed), "--json",
           "--latency-rounds", "3", *(["--checkpoint", checkpoint] if checkpoint else []), *shlex.split(variant)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode not in (0, 3):
        raise SystemExit(f"run failed ({done.returncode}): {shlex.join(cmd)}; see {log}")
    report = json.loads(done.stdout)
    out = {"test": {k: report.get(k) for k in KEYS}, "heldout": report.get("heldout", {}), "kept": report["kept"],
           "in_band": report["in_band"], "fix": report.get("fix"), "gate_init": report.get("gate_init"),
           "regularizer": report["regularizer"], "wall_seconds": report["wall_seconds"],
           "removed_by_group": report.get("finalize", {}).get("removed_by_group"),
           "controller_history": [[h["step"], round(h["soft_fraction"], 4), round(h["lambda"], 4)]
                                  for h in report.get("controller_history", [])]}
    if report.get("compare"):
        out["compare"] = report["compare"]
    return out


def _label(record: dict[str, Any]) -> str:
    """A record's row: its variant, the commit that ran it and its thread setting."""
    threads = record["settings"].get("threads")
    return f"{record['settings']['variant'] or '(as shipped)'} [{record['commit'][:7]}" + (
        f", {threads} threads]" if threads else "]")


def rows(path: Path) -> dict[str, list[tuple[int, float, float | None, float]]]:
    """``{row name: [(seed, test, held-out, FLOPs kept), ...]}``: one row per variant (its own
    regularizer) and thread setting, one per method a variant ran with ``--compare`` (named
    ``variant [commit, threads], compare METHOD``) and one for the unpruned model trained as long
    (``..., unpruned``, where the run trained it), over every record of this benchmark."""
    out: dict[str, list[tuple[int, float, float | None, float]]] = {}
    for r in records.load_records(path):
        if r.get("benchmark") != BENCHMARK:
            continue
        res, label = r["result"], _label(r)
        out.setdefault(label, []).append((r["seed"], res["test"]["acc_finetuned"],
                                          res["heldout"].get("acc_finetuned"), res["kept"]))
        if res["test"].get("acc_unpruned_same_epochs") is not None:
            out.setdefault(f"{label}, unpruned", []).append(
                (r["seed"], res["test"]["acc_unpruned_same_epochs"],
                 res["heldout"].get("acc_unpruned_same_epochs"), 1.0))
        for method, c in res.get("compare", {}).items():
            out.setdefault(f"{label}, compare {method}", []).append(
                (r["seed"], c["acc_finetuned"], c.get("heldout_acc_finetuned"), c["kept"]))
    return out


def table(path: Path) -> str:
    """Mean (± std over seeds) of the fine-tuned accuracy per row, held-out first; rows are
    labelled with the commit that ran them."""
    def cell(values: list[float]) -> str:
        if len(values) < 2:
            return f"{values[0]:.4f}" if values else "-"
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    lines = ["| run [commit] | seeds | held-out fine-tuned | test fine-tuned | FLOPs kept |", "|---|---|---:|---:|---:|"]
    table_rows = rows(path)
    for name, rs in table_rows.items():
        lines.append(f"| {name} | {','.join(str(r[0]) for r in rs)} | {cell([r[2] for r in rs if r[2] is not None])} | "
                     f"{cell([r[1] for r in rs])} | {cell([r[3] for r in rs])} |")
    return "\n".join(lines + verdicts(table_rows))


def verdicts(table_rows: dict[str, list[tuple[int, float, float | None, float]]]) -> list[str]:
    """For each run of two or more seeds that compared methods, on test and on held-out: GDP's
    mean accuracy minus each other row's of the same run (points), beside twice the larger
    standard deviation, and the same difference paired by seed (a seed's runs share its
    pretrained weights and data order, so the paired spread is the method's, not the seed's)."""
    out = []
    for name, rs in table_rows.items():
        others = {k[len(name) + 2:]: v for k, v in table_rows.items() if k.startswith(name + ", ")}
        if len(rs) < 2 or not others:
            continue
        for split, index in (("test", 1), ("held-out", 2)):
            parts = [part for other, vs in others.items() if (part := _difference(other, rs, vs, index))]
            if parts:
                out.append(f"- {name}, GDP minus ({split}, points): " + "; ".join(parts))
    return ["", *out] if out else []


def _difference(other: str, gdp: list[tuple[int, float, float | None, float]],
                theirs: list[tuple[int, float, float | None, float]], index: int) -> str:
    """``other: +d (twice the spread s; by seed ...)`` on the accuracy at ``index`` of the row
    tuples (1 test, 2 held-out), or '' where GDP has under two seeds of it."""
    mine = [r[index] for r in gdp if r[index] is not None]
    them = [r[index] for r in theirs if r[index] is not None]
    if len(mine) < 2 or not them:
        return ""
    spread = 2 * max(statistics.stdev(mine), statistics.stdev(them) if len(them) > 1 else 0.0)
    return (f"{other}: {100 * (statistics.mean(mine) - statistics.mean(them)):+.2f} "
            f"(twice the spread {100 * spread:.2f}{paired(gdp, theirs, index)})")


#: the fewest seeds a row shares with the reference run to get a line in ``--paired``
PAIRED_MIN_SEEDS = 6


def _differences_by_seed(mine: list[tuple[int, float, float | None, float]],
                         theirs: list[tuple[int, float, float | None, float]], index: int) -> dict[int, float]:
    """``{seed: mine - theirs}`` in points at ``index`` of the row tuples (1 test, 2 held-out),
    over the seeds both rows have a value for."""
    by_seed = {r[0]: r[index] for r in theirs if r[index] is not None}
    return {r[0]: 100 * (r[index] - by_seed[r[0]]) for r in mine if r[index] is not None and r[0] in by_seed}


def _paired_difference(mine: list[tuple[int, float, float | None, float]],
                       theirs: list[tuple[int, float, float | None, float]], index: int) -> tuple[float, float, int]:
    """(mean difference in points, its standard error, seeds) of ``mine`` minus ``theirs`` at
    ``index`` of the row tuples (1 test, 2 held-out), paired by seed."""
    return _mean_and_error(_differences_by_seed(mine, theirs, index))


def _mean_and_error(diffs: dict[int, float]) -> tuple[float, float, int]:
    """(mean, standard error, count) of by-seed differences; NaNs under two seeds."""
    if len(diffs) < 2:
        return math.nan, math.nan, len(diffs)
    values = list(diffs.values())
    return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5, len(values)


def _threads(row: str) -> str:
    """The thread setting in a row's label ('' for records that did not note it)."""
    found = re.search(r"\[[0-9a-f]{7}(?:, ([^\]]*))?\]", row)
    return (found.group(1) or "") if found else ""


def paired_table(path: Path, reference: str) -> str:
    """Every row that shares at least :data:`PAIRED_MIN_SEEDS` seeds with the run ``reference``
    (a GDP row that ran ``--compare``, named by an end of its label) at its thread setting, minus
    that run's GDP and each of its other rows (compared methods, unpruned): held-out / test, in
    points, paired by seed, with the standard error in brackets."""
    table_rows = rows(path)
    hits = [name for name in table_rows if name.endswith(reference)]
    if len(hits) != 1:
        raise SystemExit(f"--paired {reference!r} names {len(hits)} rows")
    ref = hits[0]
    columns = {"GDP": ref} | {k[len(ref) + 2:]: k for k in table_rows if k.startswith(ref + ", ")}
    lines = [f"Minus the rows of {ref}: held-out / test, points (standard error)", "",
             "| run [commit] | seeds | " + " | ".join(f"minus {c}" for c in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for name, rs in table_rows.items():
        if name in columns.values() or _threads(name) != _threads(ref) or \
                _paired_difference(rs, table_rows[ref], 1)[2] < PAIRED_MIN_SEEDS:
            continue  # a seed is one computation only at one thread setting
        cells = []
        for other in columns.values():
            (h, he, _), (t, te, n) = (_paired_difference(rs, table_rows[other], i) for i in (2, 1))
            cells.append(f"{h:+.2f} ({he:.2f}) / {t:+.2f} ({te:.2f})")
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pair(path: Path, mine: str, theirs: str) -> str:
    """Row ``mine`` minus row ``theirs`` (each named by its label or an end of it that ends one
    row only) on test and held-out: mean difference in points over the seeds both ran, paired by
    seed, with its standard error. Rows of different runs pair because one seed at one thread is
    one computation (its pretrained weights and data order), whichever run it came from."""
    table_rows = rows(path)

    def named(part: str) -> str:
        hits = [name for name in table_rows if name.endswith(part)]
        if len(hits) != 1:
            raise SystemExit(f"--pair {part!r} names {len(hits)} rows: " + "; ".join(hits[:5]))
        return hits[0]

    a, b = named(mine), named(theirs)
    lines = [f"{a}  minus  {b}:"]
    for split, index in (("test", 1), ("held-out", 2)):
        mean, _, seeds = _paired_difference(table_rows[a], table_rows[b], index)
        lines.append(f"- {split}: under two shared seeds" if seeds < 2 else
                     f"- {split}: {mean:+.2f} points over {seeds} seeds{paired(table_rows[a], table_rows[b], index)}")
    return "\n".join(lines)


def widths(path: Path) -> str:
    """Units removed per group (the analysis' group ids), mean over the seeds of each row whose
    records have them (``removed_by_group``: GDP's finalize report and each compared method's)."""
    removed: dict[str, list[dict[str, int]]] = {}
    for r in records.load_records(path):
        if r.get("benchmark") != BENCHMARK:
            continue
        res, label = r["result"], _label(r)
        entries = [(label, res.get("removed_by_group"))]
        entries += [(f"{label}, compare {m}", c.get("removed_by_group")) for m, c in res.get("compare", {}).items()]
        for row, by_group in entries:
            if by_group is not None:
                removed.setdefault(row, []).append(by_group)
    groups = sorted({int(g) for runs in removed.values() for run in runs for g in run})
    lines = ["| run [commit] | seeds | " + " | ".join(f"g{g}" for g in groups) + " | total |",
             "|---|---:|" + "---:|" * (len(groups) + 1)]
    for row, runs in removed.items():
        means = [statistics.mean(run.get(str(g), 0) for run in runs) for g in groups]
        lines.append(f"| {row} | {len(runs)} | " + " | ".join(f"{m:.1f}" for m in means) + f" | {sum(means):.1f} |")
    return "\n".join(lines)


def paired(gdp: list[tuple[int, float, float | None, float]], other: list[tuple[int, float, float | None, float]],
           index: int = 1) -> str:
    """``; by seed s0 +a, s1 +b, ...: standard error e`` over the seeds both rows ran (accuracy at
    ``index`` of the row tuples), or '' (under two)."""
    diffs = _differences_by_seed(gdp, other, index)
    _, error, seeds = _mean_and_error(diffs)
    if seeds < 2:
        return ""
    return f"; by seed {', '.join(f's{seed} {d:+.2f}' for seed, d in sorted(diffs.items()))}: standard error {error:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data")
    p.add_argument("--checkpoint", help="shared pretrained weights (gdp-graph train --save-pretrained)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--variant", action="append", default=None, help="extra gdp-graph train arguments (repeatable)")
    p.add_argument("--widths", action="store_true", help="print the units each row removed per group and stop")
    p.add_argument("--paired", metavar="RUN", help="print every row that shares enough seeds with RUN (a GDP row "
                   "that ran --compare) minus RUN's rows, paired by seed, and stop")
    p.add_argument("--pair", nargs=2, metavar=("ROW", "OTHER"),
                   help="print ROW minus OTHER, paired by seed, on test and held-out, and stop (a row is named by "
                        "its label in --table or an end of it that ends one row only)")
    records.add_record_flags(p, results=RESULTS)
    args = p.parse_args()
    if args.pair or args.paired:
        print(pair(Path(args.results), *args.pair) if args.pair else paired_table(Path(args.results), args.paired))
        return
    if args.table or args.widths:
        print(table(Path(args.results)) if args.table else widths(Path(args.results)))
        return
    if not args.data:
        p.error("--data is required to run")
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    for seed in args.seeds:
        for variant in args.variant if args.variant is not None else [""]:
            settings = {"variant": variant, "checkpoint": bool(args.checkpoint), "threads": threads}
            if not args.rerun and records.recorded(args.results, BENCHMARK, settings | {"seed": seed}):
                continue
            log = Path("runs") / "main_command" / f"s{seed}_{abs(hash(variant)) % 10**8}.log"
            result = run(args.data, seed, args.checkpoint, variant, log)
            print(json.dumps({"variant": variant, "seed": seed, "test": result["test"]["acc_finetuned"],
                              "heldout": result["heldout"].get("acc_finetuned"), "kept": result["kept"]}), flush=True)
            records.append_record(args.results, records.new_record(
                BENCHMARK, settings | {"seed": seed}, result, seed=seed,
                checkpoints=[args.checkpoint] if args.checkpoint else [], note=args.note))


if __name__ == "__main__":
    main()
