"""The README and docs/ under test: every bash and Python block runs as a new user would run it,
in a fresh folder laid out like a clone of the repository, so an example that stops working
fails here.

A block is run unless the line before it says otherwise, as an HTML comment (invisible on
GitHub):

    <!-- readme-test: skip (real Janus-Pro weights) -->    never run here; the reason is required
    <!-- readme-test: slow -->                            run with `pytest -m slow`
    <!-- readme-test: server -->                          run against `openjanus serve` on a free
                                                           loopback port (the block's port 8000 is
                                                           rewritten to it)

`pip install ...` lines are satisfied by the test environment (a shell function reports them
and runs nothing): this project's own packages are what is under test, the installs are not.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import free_port

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*readme-test:\s*(?P<mark>[^>]*?)\s*-->[ \t]*\n)?"
                    r"^```(?P<lang>\w*)[ \t]*\n(?P<code>.*?)^```", re.S | re.M)
_MARK = re.compile(r"^(?:skip \((?P<reason>[^)]+)\)|(?P<slow>slow)|(?P<server>server)(?P<slow2> slow)?)$")

# What a block's shell has: the test environment's packages stand in for `pip install`.
_PRELUDE = """set -euo pipefail
pip() { echo "(test: 'pip $*' is satisfied by the test environment)"; }
"""


@dataclass(frozen=True)
class Block:
    file: str
    line: int
    lang: str
    code: str
    mark: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def blocks() -> list[Block]:
    out = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in _BLOCK.finditer(text):
            if m["lang"] not in ("bash", "python", "sh", "shell", "py"):
                continue
            line = text[:m.start("code")].count("\n")
            out.append(Block(str(path.relative_to(ROOT)), line, "python" if m["lang"] in ("python", "py") else "bash",
                             m["code"], (m["mark"] or "").strip()))
    return out


BLOCKS = blocks()


def _params() -> list:
    params = []
    for b in BLOCKS:
        mark = _MARK.match(b.mark) if b.mark else None
        marks = []
        if mark is not None and mark["reason"]:
            marks.append(pytest.mark.skip(reason=f"{b.id}: {mark['reason']}"))
        elif mark is not None and (mark["slow"] or mark["slow2"]):
            marks.append(pytest.mark.slow)
        params.append(pytest.param(b, id=b.id, marks=marks))
    return params


def test_every_block_is_run_or_says_why_not():
    """A mark the harness does not understand would silently change what runs: refuse it."""
    bad = [f"{b.id}: {b.mark!r}" for b in BLOCKS if b.mark and not _MARK.match(b.mark)]
    assert not bad, "unknown readme-test marks: " + "; ".join(bad)
    assert any(not b.mark for b in BLOCKS), "no README block runs by default"


def _clone_like(folder: Path) -> Path:
    """A working folder that looks like a fresh clone: the repository's top-level files and folders
    as symbolic links (the blocks read them; what they write lands in the folder itself)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for top in sorted({line.split("/", 1)[0] for line in tracked.splitlines() if line}):
        if (ROOT / top).exists():
            (folder / top).symlink_to(ROOT / top)
    return folder


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
            "PYTHONUNBUFFERED": "1"}


def _start_server(cwd: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "openjanus.cli", "serve", "--port", str(port)], cwd=cwd,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"openjanus serve exited: {proc.stderr.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("openjanus serve did not start listening within 180 s")


@pytest.mark.parametrize("block", _params())
def test_block_runs(block: Block, tmp_path):
    cwd = _clone_like(tmp_path)
    code = block.code
    server = None
    if block.mark.startswith("server"):
        port = free_port()
        code = code.replace("8000", str(port))
        server = _start_server(cwd, port)
    try:
        if block.lang == "python":
            (cwd / "block.py").write_text(code)
            argv = [sys.executable, "block.py"]
        else:
            argv = ["bash", "-c", _PRELUDE + code]
        timeout = 1800 if "slow" in block.mark else 600
        r = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    assert r.returncode == 0, f"{block.id} failed (exit {r.returncode}):\n{code}\n--- stdout\n{r.stdout[-3000:]}" \
                              f"\n--- stderr\n{r.stderr[-3000:]}"
