"""Did the machine reclaim memory while we timed? Timings taken while the kernel pages memory
out (or back in) measure the machine, not the code: a benchmark refuses ratios from such runs.

Counters: the kernel's page-reclaim counters (/proc/vmstat: pages scanned and stolen by kswapd
or by direct reclaim, pages swapped in and out) and this process's major page faults (pages
it had to read back from disk, e.g. evicted weights of a memory-mapped checkpoint).
"""

from __future__ import annotations

import resource
from pathlib import Path

_VMSTAT = ("pgscan_kswapd", "pgscan_direct", "pgsteal_kswapd", "pgsteal_direct", "pswpin", "pswpout")


def _counters() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name in _VMSTAT:
                out[name] = int(value)
    except OSError:  # not Linux: only the process's own faults
        pass
    out["major_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    return out


class ReclaimWatch:
    """`with ReclaimWatch() as w: ...` then `w.reclaimed` (bool) and `w.delta` (counter -> pages)."""

    def __enter__(self) -> ReclaimWatch:
        self._before = _counters()
        return self

    def __exit__(self, *exc: object) -> None:
        after = _counters()
        self.delta = {k: after[k] - self._before.get(k, 0) for k in after if after[k] != self._before.get(k, 0)}

    @property
    def reclaimed(self) -> bool:
        return any(v > 0 for v in self.delta.values())

    def describe(self) -> str:
        return ", ".join(f"{k} +{v}" for k, v in sorted(self.delta.items())) or "none"
