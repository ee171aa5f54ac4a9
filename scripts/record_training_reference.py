"""Record the losses and final weights of the short training runs of
tests/train/training_runs.py into tests/data/training_reference.json.

Run it only when a change is meant to alter training numerically (and say so in the commit);
tests/train/test_bit_identical.py compares every later run against this file.

    python scripts/record_training_reference.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "train"))

from training_runs import RUNS, run  # noqa: E402

OUT = ROOT / "tests" / "data" / "training_reference.json"


def main() -> None:
    reference = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, _, _ in RUNS:
            reference[name] = run(name, Path(tmp) / name)
            print(f"{name}: losses {reference[name]['losses']}", file=sys.stderr)
    OUT.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
