"""Batch generation of a prompt file with 1 process against N torchrun processes (images/s).

    python bench/bench_batch_job.py                       # 64 demo-model images, 1 vs 2 processes
    python bench/bench_batch_job.py --images 256 --procs 4 --repeats 3 --model DIR

Writes a prompt file of --images one-image lines, then runs `openjanus generate --prompts`
alone and under `torchrun --nproc-per-node N` (OMP_NUM_THREADS=1: one thread per process),
alternating, after one warm-up run of each, each run into a fresh folder. Prints each run's
images/s (the job's own "total:" line: new images over the wall time from the first image
to the merged manifest, model loading excluded) and the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = ["a red circle", "a blue square above a green star", "three yellow triangles", "a purple hexagon",
          "two orange circles next to a white square"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], env: dict[str, str]) -> float:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    match = re.search(r"total: \d+ new image\(s\) in [\d.]+ s \(([\d.]+) images/s\)", done.stderr)
    if match is None:
        raise SystemExit(f"no total line in the output of {' '.join(cmd)}:\n{done.stderr[-2000:]}")
    return float(match[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--extra", default="", help="more flags for openjanus generate, e.g. '--dtype float32'")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": SHAPES[i % len(SHAPES)], "id": f"p{i}"}) + "\n"
                               for i in range(args.images)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = (["--model", args.model] if args.model else []) + args.extra.split()
    torchrun = shutil.which("torchrun") or sys.exit("torchrun is not on PATH")

    def one(k: int) -> float:
        return run([sys.executable, "-m", "openjanus", "generate", "--prompts", str(prompts), "--out",
                    str(work / f"one-{k}"), *flags], env)

    def many(k: int) -> float:
        return run([torchrun, "--nproc-per-node", str(args.procs), "--master-addr", "127.0.0.1", "--master-port",
                    str(free_port()), "-m", "openjanus", "generate", "--prompts", str(prompts), "--out",
                    str(work / f"many-{k}"), *flags], env)

    try:
        one(-1), many(-1)  # warm-up: page cache, compiled kernels' caches
        rows = [(one(k), many(k)) for k in range(args.repeats)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.images} images, one thread per process ({os.cpu_count()} CPUs visible)")
    print(f"{'run':>4} {'1 process':>12} {f'{args.procs} processes':>14} {'ratio':>7}")
    for k, (a, b) in enumerate(rows):
        print(f"{k:>4} {a:>8.2f} im/s {b:>10.2f} im/s {b / a:>6.2f}x")
    print(f"median ratio {statistics.median(b / a for a, b in rows):.2f}x "
          f"(1 process {statistics.median(a for a, _ in rows):.2f} im/s, "
          f"{args.procs} processes {statistics.median(b for _, b in rows):.2f} im/s)")


if __name__ == "__main__":
    main()
