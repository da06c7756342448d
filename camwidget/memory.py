"""Keep freed memory in the process for the next pass (Linux with glibc).

Each new image or class allocates and frees the same large buffers: activations, the
tensors the graph saves, gradients. glibc's malloc hands large freed blocks back to the
system at once (and adapts its thresholds, so whether it does depends on the order of
past frees); the next pass then maps them again, page by page. On a CPU those page
faults cost up to a third of a forward pass, and vary from run to run.
:func:`keep_freed_memory` raises glibc's two thresholds so that freed blocks stay in the
process for reuse. It is process-wide and done once; it is skipped where the user set
glibc's own ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_THRESHOLD_`` (their choice wins)
and on other platforms or allocators.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest on 64-bit systems
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

_applied: bool | None = None


def keep_freed_memory(limit: int = 256 * 2**20) -> bool:
    """Let glibc keep up to ``limit`` bytes of freed memory for reuse, and serve blocks
    up to 32 MiB from that memory instead of fresh mappings. Returns whether the
    setting is in force (True also when an earlier call set it)."""
    global _applied
    if _applied is None:
        _applied = _set(limit)
    return _applied


def _set(limit: int) -> bool:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and mallopt(M_TRIM_THRESHOLD, limit))


def give_back() -> bool:
    """After a collection of garbage, hand the freed memory the process keeps back to the
    system (glibc's ``malloc_trim``): for a server whose sessions end, as a classroom's
    students leave. Returns whether it could (False off glibc)."""
    gc.collect()
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
