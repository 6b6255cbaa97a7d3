"""Every file in benchmarks/results/ is written by scripts only: each record has exactly the fields
``benchmarks/records.new_record`` writes, a commit, a command naming a benchmark script, the
machine and the date; content from before records exists only in the files listed below, and
never changes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from benchmarks import records

RESULTS = records.ROOT / "benchmarks" / "results"
FILES = sorted(RESULTS.glob("*.json"))

#: file -> (sha256 prefix of its content other than "records", why it is kept). Written before
#: records existed, some of it annotated by hand (note, superseded, experiment, acc_test, command
#: fields no script writes); kept as history or because a table still reads it until its script
#: is rerun. Never add an entry: new results go through records.append_record. Remove an entry
#: when its content goes (a rerun by the script cannot remove it; a commit deleting history can).
LEGACY: dict[str, tuple[str, str]] = {
    "analysis_speed.json": ("c01574204b41", "the analysis table's 'previous' columns (docs/benchmarks.md)"),
    "analysis_speed_before.json": ("be1b941349de", "the analysis table's 'before' column (355c0aa)"),
    "analysis_speed_previous.json": ("be5a6075a723", "history: the measurement before analysis_speed.json's"),
    "attach_speed.json": ("6f9c0691bb40", "history: the attach table before records"),
    "cifar_gdp_tuning.json": ("1854037dfbd7", "history: GDP's twelve tuned settings (hand fields: experiment)"),
    "cifar_methods.json": ("357326981fb7", "the CIFAR methods table until the fair campaign (hand: note, superseded)"),
    "cifar_preset_tuning.json": ("0b5971e3c722", "history: the short preset's fix_at (hand: acc_test, command)"),
    "gate_overhead.json": ("6dbaac62cdfe", "history: rows of 2026-12-01, replaced in the table by records"),
    "latency_pruned_b1.json": ("cec953db9e20", "the batch-1 latency table until latency_pruned.py is rerun"),
    "latency_pruned_b16.json": ("15aba55b3ea4", "the batch-16 latency table until latency_pruned.py is rerun"),
    "memory_format.json": ("a86b1bd55088", "the 2-thread memory-format rows (not rerun: two cores)"),
}
COMMAND = re.compile(r"^python[\d.]* (benchmarks/\w+\.py)( |$)")
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _data(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _legacy(data) -> object:
    return data if isinstance(data, list) else {k: v for k, v in data.items() if k != "records"}


def _digest(content: object) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def _benchmark_names() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (records.ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_content_from_before_records_is_only_the_listed_and_unchanged(path):
    legacy = _legacy(_data(path))
    if path.name not in LEGACY:
        assert not legacy, f"{path.name}: content outside 'records' ({sorted(legacy)[:5]}): only scripts write here"
        return
    assert _digest(legacy) == LEGACY[path.name][0], f"{path.name}: the content from before records changed"


def test_the_legacy_list_names_existing_files():
    assert set(LEGACY) <= {p.name for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_record_is_what_new_record_writes(path, monkeypatch):
    monkeypatch.setattr(records, "machine", lambda: {})
    fields = set(records.new_record("probe", {}, {}))
    sources = _benchmark_names()
    for i, rec in enumerate(records.load_records(path)):
        where = f"{path.name} record {i} ({rec.get('benchmark')}, {rec.get('date')})"
        assert set(rec) == fields, f"{where}: fields {sorted(set(rec) ^ fields)} differ from new_record's"
        assert re.fullmatch(r"[0-9a-f]{40}", rec["commit"] or ""), f"{where}: no commit"
        assert isinstance(rec["dirty"], bool), f"{where}: dirty is {rec['dirty']!r}"
        match = COMMAND.match(rec["command"] or "")
        assert match and (records.ROOT / match[1]).is_file(), f"{where}: not a benchmark script: {rec['command']!r}"
        assert {"cpu", "cores", "torch", "threads"} <= set(rec["machine"] or {}), f"{where}: no machine"
        assert DATE.match(rec["date"] or ""), f"{where}: date {rec['date']!r}"
        assert f'"{rec["benchmark"]}"' in sources, f"{where}: no script writes benchmark {rec['benchmark']!r}"
        assert isinstance(rec["settings"], dict) and isinstance(rec["result"], dict), where
