"""Training depends on neither the evaluation package nor the inference pipeline: the shapes
world it shares with the benchmarks is `openjanus.shapes`, the evaluation hook is passed in by
the CLI. Checked twice: statically over every import statement in openjanus/train, and by
importing every training module in a fresh interpreter and looking at what got loaded.

Post-training (`openjanus.posttrain`: online sampling for GRPO, best-of-N) sits above both
training and the pipeline; only the command line and the server may import it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "openjanus" / "train"
FORBIDDEN = ("openjanus.eval", "openjanus.pipeline", "openjanus.posttrain")
PACKAGE = ROOT / "openjanus"
# Who may import the post-training package: itself, the command line and the server.
POSTTRAIN_USERS = ("posttrain/", "cli.py", "serve/")


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_no_training_module_imports_eval_or_pipeline() -> None:
    found = [f"{path.relative_to(ROOT)}: {name}" for path in sorted(TRAIN.rglob("*.py"))
             for name in _imported_modules(path) if _forbidden(name)]
    assert not found, "training must not import evaluation or the pipeline:\n" + "\n".join(found)


def test_importing_training_loads_neither_eval_nor_pipeline() -> None:
    modules = sorted("openjanus.train." + p.stem for p in TRAIN.glob("*.py") if p.stem != "__init__")
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    loaded = [m for m in json.loads(out.stdout) if _forbidden(m)]
    assert not loaded, f"importing openjanus.train loaded {loaded}"


def test_only_the_cli_and_server_import_posttrain() -> None:
    found = [f"{path.relative_to(ROOT)}: {name}" for path in sorted(PACKAGE.rglob("*.py"))
             if not str(path.relative_to(PACKAGE)).startswith(POSTTRAIN_USERS)
             for name in _imported_modules(path)
             if name == "openjanus.posttrain" or name.startswith("openjanus.posttrain.")]
    assert not found, "post-training sits above training and inference:\n" + "\n".join(found)
