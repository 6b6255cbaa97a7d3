"""Benchmark records: every result a benchmark writes says which code, command, seed, checkpoint
and machine produced it, so that anyone can rerun it and tell a stale record from a current one.

A results file is a JSON object whose ``"records"`` list the benchmarks append to; each record is

    {"benchmark": "analysis_speed", "settings": {...}, "result": {...}, "seed": 0,
     "checkpoints": {"runs/x.pt": "<sha256>"}, "commit": "<sha>", "dirty": false,
     "command": "python benchmarks/analysis_speed.py --models resnet50", "machine": {...},
     "date": "2026-12-06T18:40:00Z", "note": null}

``settings`` is what identifies the run (model, protocol, method, target, ...): :func:`recorded`
finds a record of the same benchmark and settings made by the same clean commit, so that a rerun
of an interrupted benchmark skips what is already done. Files written before this module keep
their content: :func:`append_record` adds the ``"records"`` list beside it (an old list becomes
``"legacy"``) and never rewrites what was there. Appends are atomic (a temporary file renamed
over the old one, under a lock on the folder), so an interrupted run never leaves half a file.

    from benchmarks import records
    parser = argparse.ArgumentParser(); records.add_record_flags(parser)
    args = parser.parse_args()
    if not args.rerun and records.recorded(out, "my_bench", settings):
        return
    records.append_record(out, records.new_record("my_bench", settings, result, note=args.note))
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

__all__ = ["RecordsError", "ROOT", "add_record_flags", "append_record", "git_state", "latest_run", "load_records",
           "machine", "new_record", "parse_with_protocol", "recorded", "run_and_table_commands", "sha256_file"]

ROOT = Path(__file__).resolve().parents[1]
PathLike = Union[str, Path]
# Paths whose changes do not make the code that produced a record unknown: the results
# themselves (each append changes them) and runs/ (git-ignored anyway).
_NOT_CODE = (":(exclude)benchmarks/results", ":(exclude)runs")


class RecordsError(Exception):
    """A results file that cannot hold records (not JSON, or not a records object)."""


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """``{"commit": full sha or None, "dirty": bool or None}``; dirty means a tracked file other
    than a results file differs from the commit (the code run is then not the commit's)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_CODE)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine() -> dict[str, Any]:
    """The CPU model and its details (family, model, stepping, cache, kernel flags: one model name
    covers several hosts on virtual machines), core counts, Python, torch version and torch's
    thread count."""
    import torch

    from gdp_graph.latency.cache import cpu_identity

    cpu, details = cpu_identity()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cpu_details": details, "cores": os.cpu_count(), "usable_cores": usable, "host": platform.node(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def command_line(argv: Optional[list[str]] = None) -> str:
    """The full command as typed: the interpreter and its flags, the script (relative to the
    repository root where it lies inside it) and every argument."""
    if argv is None:
        original = list(getattr(sys, "orig_argv", []))
        tail = sys.argv[1:]
        # orig_argv keeps the interpreter's flags and ``-m module``; sys.argv is what the script
        # parses (and what a caller may have replaced), so it wins when the two disagree
        argv = original if original and original[len(original) - len(tail):] == tail else [sys.executable, *sys.argv]
    argv = list(argv)
    if argv:
        argv[0] = Path(argv[0]).name
    for i, arg in enumerate(argv[1:], start=1):
        path = Path(arg)
        if path.suffix == ".py" and path.is_absolute() and path.is_relative_to(ROOT):
            argv[i] = str(path.relative_to(ROOT))
    return shlex.join(argv)


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def new_record(benchmark: str, settings: Mapping[str, Any], result: Mapping[str, Any], *,
               seed: Optional[int] = None, checkpoints: Iterable[PathLike] = (), note: Optional[str] = None,
               argv: Optional[list[str]] = None) -> dict[str, Any]:
    """A record of one run: its settings and result with the commit, dirty flag, command line,
    seed, the sha256 of every checkpoint it read, the machine and the date (UTC)."""
    json.dumps(settings), json.dumps(result)  # fail here, not half-way through a write
    return {"benchmark": benchmark, "settings": dict(settings), "result": dict(result), "seed": seed,
            "checkpoints": {str(p): sha256_file(p) for p in checkpoints}, **git_state(),
            "command": command_line(argv), "machine": machine(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": note}


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"records": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordsError(f"{path}: not a JSON results file ({e})") from e
    if isinstance(data, list):
        return {"legacy": data, "records": []}
    if not isinstance(data, dict) or not isinstance(data.get("records", []), list):
        raise RecordsError(f"{path}: expected a JSON object with a 'records' list")
    return {**data, "records": data.get("records", [])}


def load_records(path: PathLike) -> list[dict[str, Any]]:
    """The records of a results file (``[]`` when it does not exist or predates records)."""
    return _read(Path(path))["records"]


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_record(path: PathLike, record: Mapping[str, Any]) -> None:
    """Append ``record`` to the results file at ``path``: the whole file is written to a
    temporary file beside it and renamed over it, so readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(record))  # a record that is not JSON fails before anything is touched
    with _folder_lock(path.parent):
        data = _read(path)
        data["records"].append(json.loads(text))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(data, indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def recorded(path: PathLike, benchmark: str, settings: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The latest record of ``benchmark`` with these ``settings`` made by the current commit on a
    clean tree, or None. A dirty tree matches nothing: the code that ran is not known."""
    state = git_state()
    if state["commit"] is None or state["dirty"] is not False:
        return None
    wanted = json.loads(json.dumps(dict(settings)))  # tuples compare as the lists they are stored as
    for record in reversed(load_records(path)):
        if (record.get("benchmark") == benchmark and record.get("settings") == wanted
                and record.get("commit") == state["commit"] and record.get("dirty") is False):
            return record
    return None


def add_record_flags(parser: argparse.ArgumentParser, results: Optional[PathLike] = None,
                     results_flag: str = "--results") -> None:
    """``--note TEXT`` (stored in every record of the run) and ``--rerun`` (run again what the
    current commit has already recorded); with ``results``, also ``results_flag FILE`` (default
    ``results``) and ``--table`` (print the file's table and stop)."""
    parser.add_argument("--note", default=None, help="free text stored with every record this run writes")
    parser.add_argument("--rerun", action="store_true", help="rerun settings this commit has already recorded")
    if results is not None:
        parser.add_argument(results_flag, type=Path, default=Path(results), help=f"the results file (default {results})")
        parser.add_argument("--table", action="store_true", help="print the table of the results file and stop")
        parser.set_defaults(results_dest=results_flag.lstrip("-").replace("-", "_"))


def pending(path: PathLike, benchmark: str, runs: Iterable[tuple[Any, Mapping[str, Any]]],
            rerun: bool = False) -> Iterator[tuple[Any, Mapping[str, Any]]]:
    """The ``(key, settings)`` pairs of ``runs`` that the current commit has not recorded yet (all
    with ``rerun``), saying which it skips: what makes a long benchmark resumable."""
    for key, settings in runs:
        if not rerun and recorded(path, benchmark, settings):
            print(f"skip {key}: recorded by this commit", flush=True)
            continue
        yield key, settings


def parse_or_table(parser: argparse.ArgumentParser, argv: Optional[list[str]],
                   table: Callable[[Path], str]) -> Optional[argparse.Namespace]:
    """The parsed arguments, or None after printing ``table(results file)`` when ``--table`` is
    given (flags from :func:`add_record_flags` with ``results``)."""
    args = parser.parse_args(argv)
    if not args.table:
        return args
    print(table(getattr(args, args.results_dest)))
    return None


def parse_with_protocol(parser: argparse.ArgumentParser, protocols: Mapping[str, Mapping[str, Any]],
                        default: str, argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` with ``--protocol NAME``: the named preset's values become the defaults
    (flags given explicitly still win), so a documented protocol is one word to rerun."""
    parser.add_argument("--protocol", choices=sorted(protocols), default=default,
                        help=f"named settings preset (default {default}); explicit flags override it")
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**protocols[known.protocol])
    return parser.parse_args(argv)


def latest_run(path: PathLike, benchmark: str, by: str = "model") -> Optional[dict[str, Any]]:
    """The last run of ``benchmark`` in a results file as one table's worth: the latest record,
    and ``{settings[by]: result}`` over the records made by the same commit with the same other
    settings (each key's latest). None when the file holds no record of ``benchmark``."""
    mine = [r for r in load_records(path) if r.get("benchmark") == benchmark]
    if not mine:
        return None
    last = mine[-1]

    def rest(r: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r["settings"].items() if k != by}

    rows: dict[str, Any] = {}
    for r in mine:
        if r.get("commit") == last.get("commit") and rest(r) == rest(last):
            rows[r["settings"][by]] = r["result"]  # a rerun replaces the earlier result in place
    return {"record": last, "rows": rows}


def run_and_table_commands(parser: argparse.ArgumentParser, results: Path) -> argparse.ArgumentParser:
    """The two subcommands of a benchmark whose table is printed from its records: ``run``
    (``--out FILE``, ``--note``, ``--rerun``; returned, for the benchmark's own settings) and
    ``table`` (``--results FILE``)."""
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure and append records")
    run.add_argument("--out", type=Path, default=results)
    add_record_flags(run)
    sub.add_parser("table", help="print the last run's table").add_argument("--results", type=Path, default=results)
    return run
