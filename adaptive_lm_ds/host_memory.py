"""Host (CPU) memory of this process: glibc's allocator set to give freed tensors back, and its peak RSS.

Why the allocator matters: torch's CPU tensors come from glibc ``malloc``. glibc serves a request of at
least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and unmaps it on ``free``; smaller ones come from
the heap, whose free space is kept by the process. The threshold starts at 128 KiB but *rises to the
size of every mmapped chunk freed*, up to 32 MiB. A run frees many medium tensors (building gbw_huge's
fp32 shard and converting it to bf16, megatron's full master matrices at init, the per-layer
activations), so after the first such free every tensor below 32 MiB lands in the heap and the RSS
keeps what was freed: at gbw_huge TP2 bf16 a rank held 6.1 GB of RSS for 3.1 GB of live tensors right
after ``deepspeed.initialize`` (BENCHMARKS.md, "Memory at real shapes"). Fixing the threshold at
:data:`MMAP_THRESHOLD` (setting it switches the dynamic rise off) returns every freed tensor of 1 MiB
or more to the OS at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

MMAP_THRESHOLD = 1 << 20  # bytes: a tensor of 1 MiB or more gets its own mapping, unmapped on free
_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>


@functools.lru_cache(maxsize=1)
def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def configure_host_allocator(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where the C library is not glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ``ru_maxrss`` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
