"""Latency tables cached on disk, keyed by everything they depend on: the graph (its code,
parameter and input shapes), the device, the torch version, threads, batch, dtype, memory
format and the grid. A table measured once is reused by every later run with the same key."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch

from gdp_graph.graph.analysis import Analysis
from gdp_graph.graph.cost import CostModel
from gdp_graph.latency.allocator import hold_freed_memory
from gdp_graph.latency.build import build_table
from gdp_graph.latency.table import LatencyTable
from gdp_graph.latency.timing import Timer
from gdp_graph.policy.schema import LatencySettings


#: how a table turns timed passes into seconds (a table made another way is measured again)
ESTIMATOR = "fastest-of-7/whole-per-width/2-mixed/thread-cpu-time-at-1-thread"
#: CPU flags that select other kernels in oneDNN and MKL: virtual machines often report one model
#: name ("Intel(R) Xeon(R) Processor") for hosts of different generations, which these tell apart
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def fingerprint(analysis: Analysis) -> str:
    """sha256 of the traced graph's code and the shapes and dtypes of its parameters, buffers
    and example inputs (not the weights' values: they do not change the time)."""
    gm = analysis.traced.gm
    h = hashlib.sha256(gm.code.encode())
    for name, t in [*gm.named_parameters(), *gm.named_buffers()]:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    for x in analysis.traced.example_inputs:
        h.update(f"in:{tuple(x.shape)}:{x.dtype};".encode() if isinstance(x, torch.Tensor) else repr(type(x)).encode())
    return h.hexdigest()


def cpu_identity(cpuinfo: Optional[str] = None) -> tuple[str, str]:
    """``(model name, details)`` of the first CPU in ``/proc/cpuinfo`` (``cpuinfo``: its text):
    details are family, model, stepping, cache size and the :data:`KERNEL_FLAGS` it has, so that
    two hosts sold under one model name differ. Without ``/proc/cpuinfo``: the platform's name
    and no details."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine(), ""
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    parts = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping", "cache size") if k in fields]
    parts += [f for f in KERNEL_FLAGS if f in flags]
    return fields.get("model name") or platform.processor() or platform.machine(), ", ".join(parts)


def device_name(device: str) -> str:
    """The device as precisely as torch and the OS name it (GPU name; CPU model name with
    :func:`cpu_identity`'s details)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    name, details = cpu_identity()
    return f"{dev.type}:{name}" + (f" [{details}]" if details else "")


def table_key(analysis: Analysis, settings: LatencySettings) -> dict[str, Any]:
    return {"graph": fingerprint(analysis), "device": device_name(settings.device), "torch": torch.__version__,
            "threads": settings.threads, "batch": settings.batch, "dtype": settings.dtype,
            "memory_format": settings.memory_format, "points": settings.points, "round_to": settings.round_to,
            "estimator": ESTIMATOR, "allocator": hold_freed_memory()}


def cache_folder(settings: LatencySettings) -> Path:
    if settings.cache:
        return Path(settings.cache).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "gdp-graph" / "latency"


def cache_path(key: dict[str, Any], settings: LatencySettings) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_folder(settings) / f"{digest}.json"


def load_or_build(analysis: Analysis, settings: Optional[LatencySettings] = None, *,
                  cost_model: Optional[CostModel] = None, timer: Optional[Timer] = None, show_progress: bool = True,
                  console: Any = None, rebuild: bool = False) -> LatencyTable:
    """The cached table for this graph and ``settings``, else one measured now (with a progress
    bar) and cached. A cached file whose key differs or that cannot be read is rebuilt."""
    settings = settings or LatencySettings()
    key = table_key(analysis, settings)
    path = cache_path(key, settings)
    if path.is_file() and not rebuild:
        try:
            table = LatencyTable.load(path)
            if dict(table.key) == key:
                return table
        except (ValueError, KeyError, OSError):
            pass  # unreadable or stale: measured again below
    with _progress(show_progress, console) as report:
        table = build_table(analysis, settings, key=key, cost_model=cost_model, timer=timer, progress=report)
    table.save(path)
    return table


def _progress(show: bool, console: Any):
    """A rich progress bar as ``report(label, done, total)``, or nothing."""
    if not show:
        return nullcontext(None)
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def bar():
        with Progress(TextColumn("latency table"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                      TimeElapsedColumn(), console=console, transient=True) as p:
            task = p.add_task("whole model", total=None)

            def report(label: str, done: int, total: int) -> None:
                p.update(task, description=label, completed=done, total=total)
            yield report
    return bar()
