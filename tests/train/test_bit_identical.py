"""Training gives bit-identical losses and weights to the values recorded in
tests/data/training_reference.json (scripts/record_training_reference.py), one short run per
task kind: the Janus stages, VQ, SigLIP and text pretraining.

Exact equality, not a tolerance: the same config, the same seeds, the same CPU kernels on one
thread run the same floating-point operations in the same order, so a refactor that keeps the
computation must reproduce every bit. A change that is meant to alter training re-records the
reference and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_runs import RUNS, run

REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "data" / "training_reference.json").read_text())


@pytest.mark.parametrize("name", [name for name, _, _ in RUNS])
def test_training_is_bit_identical_to_the_reference(name: str, tmp_path) -> None:
    got, want = run(name, tmp_path), REFERENCE[name]
    assert got["losses"] == want["losses"]
    assert got["weights"] == want["weights"]
