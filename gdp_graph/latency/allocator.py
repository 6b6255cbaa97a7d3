"""Freed memory kept by the process while latency is measured.

glibc's malloc hands large blocks back to the system when they are freed (``munmap`` above its
mmap threshold, a trimmed heap top above its trim threshold) and moves both thresholds with what
the process has freed so far. A forward whose activations come back as fresh pages pays a page
fault per page, so the same model timed at the start of a process and after some training runs
at different speeds, and a pruned model's ratio to the original moves with it (the original's
activations are the larger). Holding both thresholds fixed (``mallopt``) makes a process measure
what a process that has been running for a while measures, whatever it did before, which is
what a deployed model sees. ``benchmarks/latency_repeat.py --train-between 5 [--malloc pinned]``
measures both (docs/latency.md).
"""

from __future__ import annotations

import ctypes
import functools
import sys

__all__ = ["MMAP_BYTES", "TRIM_BYTES", "hold_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
TRIM_BYTES = 1 << 30  # keep up to 1 GiB of freed heap top
MMAP_BYTES = 32 << 20  # glibc's largest mmap threshold: blocks below it come from the heap


@functools.lru_cache(maxsize=None)
def hold_freed_memory() -> str:
    """Fix glibc's trim and mmap thresholds for the rest of the process (once; freed memory then
    stays with the process). Returns ``"held"``, or ``"system"`` where there is no glibc
    ``mallopt`` to call (other platforms or C libraries: their allocator is left as it is)."""
    if not sys.platform.startswith("linux"):
        return "system"
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already uses
    except (OSError, AttributeError):
        return "system"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES) != 1 or mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES) != 1:
        return "system"  # musl's mallopt is a stub that returns 0
    return "held"
