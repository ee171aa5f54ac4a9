"""Keep freed CPU memory in the process (glibc), so that inference does not page-fault its large
activations in again on every use.

PyTorch takes CPU tensors from malloc. glibc serves allocations above its mmap threshold with
fresh pages of their own and unmaps them when they are freed, so every large activation (the
VQ decoder's 75 MB feature maps at 384 px) is faulted in page by page again, each time it is
made. A high mmap threshold and trim threshold make such blocks come from the heap and stay there
once freed: the process keeps its high-water mark, and the next tensor of that size reuses pages
that are already mapped. Full-size VQ decode of one image at fp32 on the 2-core CPU: 3.05 ->
2.43 s, bit-identical (`python bench/bench_official_work.py --no-keep-freed-memory` shows the
difference). The inference commands apply it; `openjanus train` does not (its data workers would
each keep their peak).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks larger than this (whole checkpoints read at once) still get their own mapping
# glibc builds that cap the threshold refuse more than 32 MiB on 64-bit: then at least that.
CAPPED_MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = (1 << 31) - 1


def keep_freed_memory() -> bool:
    """Apply the glibc settings described above; False where they do not apply (no glibc:
    macOS, Windows, musl), which changes nothing but speed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_set = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, CAPPED_MMAP_THRESHOLD)
    return bool(mmap_set) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> bool:
    """Give the memory freed so far back to the system (glibc's malloc_trim): what a server
    calls when a burst is over, since `keep_freed_memory` otherwise keeps its peak for good.
    False where it does not apply (no glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


__all__ = ["keep_freed_memory", "release_freed_memory"]
