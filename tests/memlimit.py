"""Run a snippet of Python in a subprocess whose address space is capped (RLIMIT_AS), so a test
can check that some work stays under a memory bound: the cap is the interpreter's size after
importing torch, numpy, PIL and openjanus, plus `budget_mb`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PRELUDE = """
import re, resource
import numpy, torch, PIL.Image
import openjanus.images, openjanus.train.data, openjanus.train.trainer
torch.set_num_threads(1)
_vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
_cap = _vm + ({budget_mb} << 20)
resource.setrlimit(resource.RLIMIT_AS, (_cap, _cap))
"""


def run_limited(code: str, budget_mb: int, timeout: float = 300, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run `code` (dedented) after the imports above, with `budget_mb` MiB of address space to
    spare; returns the finished process (text stdout/stderr)."""
    # This checkout's openjanus, whatever the installed one is.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    program = _PRELUDE.format(budget_mb=budget_mb) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)
