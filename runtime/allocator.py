"""Keep freed memory in the process for reuse (glibc's allocator on Linux).

A training step allocates and frees the same large tensors again and again
(a batch of 32 Atari stacks as floats is 3.6 MB). With glibc's defaults, blocks
that large are mapped afresh from the kernel and unmapped when freed, or the free
top of the heap is handed back to the kernel (past 128 KB at first, past twice the
largest block freed so far later); either way the next step touches new pages and
pays a page fault for each (up to a few hundred per DrQ update on Atari here).
:func:`keep_freed_memory` raises those thresholds so that freed blocks stay
in the process and are reused: the process's resident memory stays at its peak
instead of shrinking between steps. ``keep_freed_memory: false`` in the
config keeps glibc's defaults. Other platforms and C libraries are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20     # glibc's largest allowed value: blocks below it come from the heap
TRIM_THRESHOLD = 1 << 30      # hand the heap's top back only past 1 GiB free
TOP_PAD = 64 << 20            # grow the heap in 64 MiB steps


def keep_freed_memory() -> bool:
    """Tune glibc's malloc to keep freed blocks for reuse; True when it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version   # glibc only (musl has no mallopt parameters to tune)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
