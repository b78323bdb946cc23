"""Host (CPU) memory of this process: glibc's allocator tuned per phase, and its peak RSS.

Why the allocator matters: torch's CPU tensors come from glibc ``malloc``. glibc serves a request of at
least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and unmaps it on ``free``; smaller ones come from
the heap, whose free space the process keeps and reuses. The threshold starts at 128 KiB but *rises to
the size of every mmapped chunk freed*, up to 32 MiB.

* **Start-up** (building the model, ``deepspeed.initialize``, loading weights) frees many medium tensors
  once: gbw_huge's fp32 shard after its bf16 cast, megatron's full master matrices at init. Left to the
  dynamic threshold they stay in the heap: a gbw_huge TP2 bf16 rank held 6.1 GB of RSS for 3.1 GB of
  live tensors right after ``deepspeed.initialize`` (BENCHMARKS.md, "Memory at real shapes").
  :func:`start_up_phase` fixes the threshold at :data:`START_UP_MMAP_THRESHOLD` (1 MiB), so each such
  tensor is unmapped when freed.
* **Steps** allocate and free the same activations at every micro batch. Under a 1 MiB threshold each
  one is a fresh ``mmap`` whose pages fault in again and are zeroed by the kernel, every time: fairseq's
  command line trained at 0.6x its speed (BENCHMARKS.md, "Against fairseq-train"). :func:`steady_phase`
  gives the start-up's garbage back once (``malloc_trim``), then lets the heap keep and reuse chunks up to
  :data:`STEADY_MMAP_THRESHOLD` (the dynamic threshold's own ceiling) and keeps freed memory at the top
  of the heap up to :data:`STEADY_TRIM_THRESHOLD` instead of returning and re-faulting it each step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

START_UP_MMAP_THRESHOLD = 1 << 20  # bytes: a tensor of 1 MiB or more gets its own mapping, unmapped on free
STEADY_MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: also mallopt's upper bound
STEADY_TRIM_THRESHOLD = 1 << 30  # free top-of-heap kept for the next micro batch before it is returned
_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")
        return libc if ok else None
    except OSError:
        return None


def start_up_phase() -> bool:
    """Return freed tensors of 1 MiB or more to the OS at once (model building, loading); False where the
    C library is not glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, START_UP_MMAP_THRESHOLD))


def steady_phase() -> bool:
    """Give the start-up's freed memory back, then let repeated steps reuse the heap (module docstring)."""
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD) and libc.mallopt(
        _M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD
    )
    libc.malloc_trim(ctypes.c_size_t(0))
    return bool(ok)


def current_rss_bytes() -> int:
    """This process's resident set size now (``VmRSS``); 0 where /proc is absent."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ``ru_maxrss`` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
