"""Record the losses and final weights of the short training runs of
tests/train/training_runs.py into tests/data/training_reference.json.

Run it only when a change is meant to alter training numerically (and say so in the commit:
then replace every machine's entry), or on a new kind of CPU from a commit before the change the
test guards (it adds or replaces this CPU's entry); tests/train/test_bit_identical.py compares
every later run against the entries.

    python scripts/record_training_reference.py [--cpu "what this CPU is"]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "train"))

from training_runs import RUNS, run  # noqa: E402

OUT = ROOT / "tests" / "data" / "training_reference.json"


def _cpu() -> str:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return f"{platform.processor() or platform.machine()}, torch CPU capability {capability}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", default=None, help="what this CPU is (default: platform and torch's CPU capability)")
    args = parser.parse_args()
    reference = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, _, _ in RUNS:
            reference[name] = run(name, Path(tmp) / name)
            print(f"{name}: losses {reference[name]['losses']}", file=sys.stderr)
    cpu = args.cpu or _cpu()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    machines = json.loads(OUT.read_text())["machines"] if OUT.is_file() else []
    machines = [m for m in machines if m["cpu"] != cpu] + [{"cpu": cpu, "commit": commit, "runs": reference}]
    OUT.write_text(json.dumps({"machines": machines}, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
