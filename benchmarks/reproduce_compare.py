"""The comparison behind ``benchmarks/reproduce.py``: which records make a table's rows, what kind
each figure is, and the interval a fresh figure must fall in.

    rows = rows_of(committed_records)                  # row key -> one record per seed
    verdicts = compare_rows(rows, rows_of(fresh_records), Tolerances())

A figure is a scalar leaf of a record's ``result`` (nested names joined with dots); lists are not
figures, but a list of repeats (``runs``, ``rounds``) or an ``iqr`` beside a time or a ratio gives
that figure's interquartile range. The kind of a figure is read from its name and value:

    time      *_s, *_ms, *seconds*, seconds.*, *ms_per_token*,      factor (over seeds: of the
              *tokens_per_s*                                         fastest and the slowest
                                                                     seed), or the IQR
    ratio     *ratio*, *speedup*, *_over_*, *share* (also X.median)   relative tolerance, or the IQR
    memory    *rss*, *_gb                                            relative 0.25
    noise     *diff*                                                 <= 10x committed, or < 1e-4
    exact     bools, strings, integers, None                         equal, seed by seed (an
                                                                     integer over several seeds:
                                                                     a value; a None the rerun
                                                                     no longer writes: equal)
    value     any other float                                        seeds: mean +- spread x std;
                                                                     one seed: relative 1e-3
Spread figures themselves (``*_min``, ``*_max``, ``min_s``, ``max_s``) are not compared, nor
the index of the round a loop kept (``chosen``, into its ``rounds``: a pointer, not a
measurement; the kept round's own figures beside it are compared).

A figure that a timing loop chose (a table names them: ``reproduce.Table.chosen_by_timing``) is
of the kind ``by-timing``, whatever its name and type. ``latency_target.py`` corrects the
fraction it aims at by what it measures and keeps the plan measured closest to the target, so
the plan it keeps (its FLOPs and parameters, its predicted latency, the FLOPs plan matched to
it) is an outcome of timings on a shared machine, not of a seed: a rerun of the same commit
keeps another plan. Such a figure is not the table's claim (the measured ratio and whether it
lands within the tolerance keep their kinds) but a description of the plan that met it:

    by-timing  every figure a table names as chosen      within the ratio tolerance (0.25)
               by a timing loop (a count too)            relative of the committed value, or
                                                         the spread of every recorded run of
                                                         the row: mean +- spread x std, or
                                                         their range, whichever is wider

The runs of a row are all its records in the results file, of any commit: a timing loop has no
seed, and its reruns are its draws, as seeds are for a trained figure (they span changes of the
timing code, such as glibc's allocator held from 1e77899: a drift they include). Why not the ratio
tolerance alone: over the six runs of ``latency_target.py`` with the loop (0197482 to 1e77899)
EfficientNet-B0 at 0.5 kept 0.131 to 0.231 of its FLOPs, MobileNetV3 at 0.7 0.403 to 0.590
of its parameters (at a low latency a small change of latency is a large change of width).
Comparing each of those runs with each other one (30 pairs, each time with the four others as
the runs) flags on these figures 1.6 of the 12 rows of a rerun with the ratio tolerance alone,
0.4 with this rule: an outside figure is one beyond what the loop has kept before by more than
its spread, still possible by chance (in about one rerun in three), never hidden. A figure no
timing chose (the flags a table claims, a ratio, a time) is never compared this way.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import statistics
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Optional

SAME_SEED = 1e-3  # relative: one seed rerun is the same computation
MEMORY = 0.25
NOISE_FLOOR, NOISE_FACTOR = 1e-4, 10.0
STATISTICS = frozenset({"median", "mean"})  # leaves that name a statistic of their parent figure


@dataclasses.dataclass(frozen=True)
class Tolerances:
    spread: float = 2.0  # seed standard deviations
    time_factor: float = 2.0  # a time may be this many times larger or smaller
    ratio: float = 0.25  # relative, on a ratio measured in one process


#: the repository's top-level folders: a relative path starting with one is a file of the checkout
_CHECKOUT_FOLDERS = frozenset(p.name for p in Path(__file__).resolve().parents[1].iterdir() if p.is_dir())


def _plain(value: Any) -> Any:
    """Settings as identity: absolute paths, and relative ones inside the checkout
    (``policies/llm.yaml``), by their file name (a worktree's path names no setting, and one
    script recorded a shipped policy by its absolute path before it recorded it relatively)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        parts = PurePosixPath(value).parts
        if value.startswith("/") or (len(parts) > 1 and parts[0] in _CHECKOUT_FOLDERS):
            return parts[-1]
    return value


def row_key(record: dict[str, Any]) -> str:
    """What identifies a record's row: its settings without the seed and the commit timed."""
    settings = {k: v for k, v in record.get("settings", {}).items() if k != "seed" and "commit" not in k}
    return json.dumps(_plain(settings), sort_keys=True)


def rows_of(recs: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Row key -> the records of the latest commit that recorded the key, the latest per seed
    (records in file order; rows in the order first recorded)."""
    latest: dict[str, dict[Any, dict[str, Any]]] = {}
    for r in recs:
        per_seed = latest.setdefault(row_key(r), {})
        if per_seed and next(iter(per_seed.values())).get("commit") != r.get("commit"):
            per_seed.clear()  # a later commit's run of this row replaces the earlier one's
        per_seed.pop(r.get("seed"), None)
        per_seed[r.get("seed")] = r
    return {k: list(v.values()) for k, v in latest.items()}


def runs_of(recs: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Row key -> every record of that key in file order, of any commit and seed: the draws of a
    figure chosen by a timing loop."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        out.setdefault(row_key(r), []).append(r)
    return out


def chosen_by_timing(name: str, patterns: Iterable[str]) -> bool:
    """Whether a figure's dotted name matches one of a table's ``chosen_by_timing`` patterns
    (``fnmatch``: ``latency_plan.*``)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def flatten(result: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, list]]:
    """(scalar leaves, list leaves) of a result, by dotted name."""
    scalars: dict[str, Any] = {}
    lists: dict[str, list] = {}
    for k, v in result.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            s, l = flatten(v, name + ".")
            scalars.update(s), lists.update(l)
        elif isinstance(v, list):
            lists[name] = v
        else:
            scalars[name] = v
    return scalars, lists


def kind_of(name: str, value: Any) -> Optional[str]:
    """The kind of a figure (module docstring), or None for a spread figure not compared."""
    parts = name.lower().split(".")
    leaf = parts[-1]
    if leaf.endswith(("_min", "_max")) or leaf in ("min", "max", "min_s", "max_s", "min_ms", "max_ms", "chosen"):
        return None
    if isinstance(value, bool) or value is None or isinstance(value, str) or isinstance(value, int):
        return "exact"
    if "diff" in leaf:
        return "noise"
    # a time, or one part of a time broken down by name (profile.pruned.ms_per_token.attention)
    if (leaf.endswith(("_s", "_ms", "seconds")) or "seconds" in parts[:-1]
            or any("ms_per_token" in p or "tokens_per_s" in p for p in parts)):
        return "time"
    # a statistic of a named ratio (speed.decode_speedup.median) is that ratio
    named = parts[-2] if leaf in STATISTICS and len(parts) > 1 else leaf
    if any(w in named for w in ("ratio", "speedup", "_over_", "share")):
        return "ratio"
    if "rss" in leaf or leaf.endswith("_gb"):
        return "memory"
    return "value"


def quartiles(values: list) -> Optional[tuple[float, float]]:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) < 2:
        return None
    q = statistics.quantiles(numbers, n=4, method="inclusive")
    return q[0], q[2]


def iqr_of(name: str, lists: dict[str, list]) -> Optional[tuple[float, float]]:
    """The interquartile range recorded beside a figure: an ``iqr`` pair, or the quartiles of a
    list of repeats (``runs``, ``rounds``) in the same place."""
    parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
    siblings = {k[len(parent):]: v for k, v in lists.items() if k.startswith(parent) and "." not in k[len(parent):]}
    if len(siblings.get("iqr", [])) == 2:
        return tuple(siblings["iqr"])  # type: ignore[return-value]
    for leaf, values in siblings.items():
        if "runs" in leaf or "rounds" in leaf:
            return quartiles(values)
    return None


def interval(kind: str, committed: list[float], iqr: Optional[tuple[float, float]],
             tol: Tolerances) -> tuple[float, float]:
    """The interval a fresh figure of this kind must fall in, from its committed values (for a
    ``by-timing`` figure, ``iqr`` is the spread of every recorded run of its row: :func:`_draws`)."""
    mean = statistics.fmean(committed)
    if kind == "by-timing":
        low, high = mean * (1 - tol.ratio), mean * (1 + tol.ratio)
        if iqr is not None:
            low, high = min(low, iqr[0]), max(high, iqr[1])
        return min(low, high), max(low, high)
    if kind == "time":  # over seeds, any seed's own time is one this machine took
        low, high = min(committed) / tol.time_factor, max(committed) * tol.time_factor
    elif kind == "ratio":
        low, high = mean * (1 - tol.ratio), mean * (1 + tol.ratio)
    elif kind == "memory":
        low, high = mean * (1 - MEMORY), mean * (1 + MEMORY)
    elif kind == "noise":
        return 0.0, max(NOISE_FACTOR * max(committed), NOISE_FLOOR)
    else:
        width = abs(mean) * SAME_SEED
        if len(committed) >= 2:
            width = max(width, tol.spread * statistics.stdev(committed))
        low, high = mean - width, mean + width
    if iqr is not None and len(committed) == 1:
        low, high = min(low, iqr[0]), max(high, iqr[1])
    return min(low, high), max(low, high)


def compare_figure(name: str, old: list[dict[str, Any]], new: list[dict[str, Any]], tol: Tolerances,
                   runs: Optional[list[dict[str, Any]]] = None) -> Optional[dict]:
    """One figure of a row: committed and fresh values (a mean over seeds), the interval, inside.
    ``runs``: every recorded run of the row, given for a figure chosen by a timing loop only."""
    old_values = [flatten(r["result"])[0].get(name) for r in old]
    new_values = [flatten(r["result"])[0].get(name) for r in new if name in flatten(r["result"])[0]]
    kind = kind_of(name, old_values[0])
    if runs is not None and kind is not None and _numbers(old_values):
        kind = "by-timing"
    if kind is None:
        return None
    out: dict[str, Any] = {"figure": name, "kind": kind, "committed": old_values[0], "fresh": None,
                           "low": None, "high": None, "inside": False}
    if not new_values:
        out["fresh"] = "missing"
        out["inside"] = all(v is None for v in old_values)  # a None figure the rerun no longer writes
        return out
    numeric = _numbers(old_values + new_values)
    if kind == "exact" and numeric and len(old_values) >= 2:
        kind = out["kind"] = "value"  # a count over seeds (units the cut removed) varies with the seed
    if kind == "exact" or not numeric:
        out.update(fresh=new_values[0], inside=_equal_by_seed(name, old, new))
        return out
    iqr = (_draws([flatten(r["result"])[0].get(name) for r in runs], tol.spread) if kind == "by-timing" and runs
           else iqr_of(name, flatten(old[-1]["result"])[1]))
    low, high = interval(kind, old_values, iqr, tol)
    fresh = statistics.fmean(new_values)
    out.update(committed=statistics.fmean(old_values), fresh=fresh, low=low, high=high, inside=low <= fresh <= high)
    return out


def _numbers(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _draws(values: list, spread: float) -> Optional[tuple[float, float]]:
    """The spread of a figure's draws: their mean +- ``spread`` standard deviations, or their
    range, whichever is wider (None under two numbers)."""
    numbers = [v for v in values if _numbers([v])]
    if len(numbers) < 2:
        return None
    mean, width = statistics.fmean(numbers), spread * statistics.stdev(numbers)
    return min(min(numbers), mean - width), max(max(numbers), mean + width)


def _equal_by_seed(name: str, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> bool:
    """Whether every fresh value equals the committed one of its seed (a message that names a
    seed's own output difference), or, for a seed the committed row lacks, one of them."""
    committed = {r.get("seed"): flatten(r["result"])[0].get(name) for r in old}
    fresh = [(r.get("seed"), flatten(r["result"])[0][name]) for r in new if name in flatten(r["result"])[0]]
    return all(value == committed[seed] if seed in committed else value in committed.values() for seed, value in fresh)


def _label(key: str, varying: set[str]) -> str:
    settings = json.loads(key)
    shown = {k: v for k, v in settings.items() if k in varying} or settings
    return ", ".join(f"{v}" if k in ("model", "name") else f"{k} {v}" for k, v in shown.items())


def compare_rows(committed: dict[str, list[dict[str, Any]]], fresh: dict[str, list[dict[str, Any]]],
                 tol: Tolerances = Tolerances(), chosen: Iterable[str] = (),
                 runs: Optional[dict[str, list[dict[str, Any]]]] = None) -> list[dict[str, Any]]:
    """A verdict per row: ``inside``, ``outside``, ``missing`` (not rerun) or ``new`` (only
    rerun), with every figure compared. ``chosen``: the patterns of the figures a timing loop
    chose; ``runs``: every recorded run of each row (:func:`runs_of`; default the committed
    rows' records)."""
    chosen = tuple(chosen)
    keys = [*committed, *(k for k in fresh if k not in committed)]
    settings = [json.loads(k) for k in keys]
    varying = {n for s in settings for n in s if len({json.dumps(t.get(n)) for t in settings}) > 1}
    out = []
    for key in keys:
        row = {"row": _label(key, varying), "key": key, "figures": []}
        if key not in committed:
            out.append({**row, "verdict": "new"})
            continue
        if key not in fresh:
            out.append({**row, "verdict": "missing"})
            continue
        names = flatten(committed[key][-1]["result"])[0]
        row_runs = (runs or {}).get(key) or committed[key]
        figures = [f for n in names if (f := compare_figure(n, committed[key], fresh[key], tol,
                                                            row_runs if chosen_by_timing(n, chosen) else None))
                   is not None]
        inside = all(f["inside"] for f in figures)
        out.append({**row, "verdict": "inside" if inside else "outside", "figures": figures,
                    "seeds": [len(committed[key]), len(fresh[key])]})
    return out
