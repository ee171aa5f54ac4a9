"""Training gives bit-identical losses and weights to the values recorded in
tests/data/training_reference.json (scripts/record_training_reference.py), one short run per
task kind: the Janus stages, VQ, SigLIP and text pretraining.

Exact equality, not a tolerance: the same config, the same seeds, the same CPU kernels on one
thread run the same floating-point operations in the same order, so a refactor that keeps the
computation must reproduce every bit. A change that is meant to alter training re-records the
reference and says so.

The same operations give other bits on another CPU (its kernels block and vectorise the sums
differently), so the file holds one reference per kind of CPU it was recorded on, each from a
commit before the change it guards; a run must equal one of them exactly. On a new kind of CPU,
record it from such a commit: `python scripts/record_training_reference.py` (it adds an entry).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_runs import RUNS, run

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "training_reference.json"
MACHINES = json.loads(REFERENCE.read_text())["machines"]


@pytest.mark.parametrize("name", [name for name, _, _ in RUNS])
def test_training_is_bit_identical_to_the_reference(name: str, tmp_path) -> None:
    got = run(name, tmp_path)
    wanted = [m["runs"][name] for m in MACHINES]
    assert got in wanted, (f"{name}: losses {got['losses']} and weights {got['weights']} equal none of the "
                           f"references recorded on {[m['cpu'] for m in MACHINES]}")
