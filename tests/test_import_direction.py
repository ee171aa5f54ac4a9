"""Imports run one way, down.

Training depends on neither the evaluation package nor inference: the shapes world it shares
with the benchmarks is `openjanus.shapes`, the evaluation hook is passed in by the CLI.

Inference is layered: sampling and the scheduler at the bottom, then the runner, the engine,
the pipeline; each imports only layers below it, the scheduler no torch at all, and nothing
in it imports the server, evaluation, the CLI or training. The modules inference stands on
(model, processing, requests, ...) do not import it.

Checked statically over every import statement (function-level ones included), and by importing
modules in a fresh interpreter and looking at what got loaded."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "openjanus"
TRAIN = PKG / "train"
INFERENCE = PKG / "inference"
FORBIDDEN = ("openjanus.eval", "openjanus.inference", "openjanus.posttrain")
# Who may import the post-training package: itself, the command line and the server.
POSTTRAIN_USERS = ("posttrain/", "cli.py", "serve/")


# Inference's layers, bottom first, and the layers each may import.
LAYERS = {
    "sampling": set(),
    "scheduler": set(),
    "runner": {"sampling"},
    "autowindow": {"sampling", "runner"},  # times the runner's steps for jacobi="auto"
    "windows": {"sampling", "scheduler", "runner"},  # the jobs of an image-conditioned request's canvas
    "engine": {"sampling", "scheduler", "runner", "autowindow", "windows"},
    "pipeline": {"sampling", "scheduler", "runner", "autowindow", "windows", "engine"},
}
ABOVE_INFERENCE = ("openjanus.serve", "openjanus.eval", "openjanus.cli", "openjanus.demo", "openjanus.train",
                   "openjanus.posttrain")
# What the inference package stands on: none of it may import inference.
BELOW_INFERENCE = ("model", "checkpoints", "shapes", "processing.py", "requests.py", "images.py", "canvas.py",
                   "config.py", "devices.py", "errors.py", "files.py", "jsonl.py", "quantize.py", "allocator.py",
                   "distributed.py")
# Generation and serving, which must not stand on the training package (the process group they
# share with training is `openjanus.distributed`).
GENERATION = ("inference", "serve", "batch_job.py", "distributed.py")


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in prefixes)


def _forbidden(name: str) -> bool:
    return _under(name, FORBIDDEN)


def _loaded_by(module: str) -> list[str]:
    code = f"import importlib, json, sys\nimportlib.import_module({module!r})\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout)


def test_no_training_module_imports_eval_or_inference() -> None:
    found = [f"{path.relative_to(ROOT)}: {name}" for path in sorted(TRAIN.rglob("*.py"))
             for name in _imported_modules(path) if _forbidden(name)]
    assert not found, "training must not import evaluation or inference:\n" + "\n".join(found)


def test_importing_training_loads_neither_eval_nor_inference() -> None:
    modules = sorted("openjanus.train." + p.stem for p in TRAIN.glob("*.py") if p.stem != "__init__")
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    loaded = [m for m in json.loads(out.stdout) if _forbidden(m)]
    assert not loaded, f"importing openjanus.train loaded {loaded}"


def test_inference_layers_import_only_layers_below() -> None:
    assert {p.stem for p in INFERENCE.glob("*.py")} - {"__init__"} == set(LAYERS), "a new module needs a layer"
    found = []
    for layer, allowed in LAYERS.items():
        path = INFERENCE / f"{layer}.py"
        for name in _imported_modules(path):
            if _under(name, ABOVE_INFERENCE):
                found.append(f"{layer} imports {name} (above inference)")
            elif name.startswith("openjanus.inference."):
                target = name.split(".")[2]
                if target not in allowed:
                    found.append(f"{layer} imports {name} (not below it)")
    assert not found, "\n".join(found)


def test_the_scheduler_is_plain_python() -> None:
    """No torch, no model: only the project's errors."""
    names = _imported_modules(INFERENCE / "scheduler.py")
    ours = sorted({n for n in names if n.startswith("openjanus")} - {"openjanus.errors", "openjanus.errors.UserError"})
    assert ours == [] and not [n for n in names if _under(n, ("torch", "numpy"))], names
    loaded = _loaded_by("openjanus.inference.scheduler")
    assert "torch" not in loaded and not [m for m in loaded if m.startswith("openjanus.model")], loaded


def test_what_inference_stands_on_does_not_import_it() -> None:
    paths = [p for entry in BELOW_INFERENCE for p in ((PKG / entry).rglob("*.py") if (PKG / entry).is_dir()
                                                     else [PKG / entry])]
    found = [f"{path.relative_to(ROOT)}: {name}" for path in paths for name in _imported_modules(path)
             if _under(name, ("openjanus.inference",) + ABOVE_INFERENCE)]
    assert not found, "\n".join(found)


def test_generation_and_serving_do_not_import_training() -> None:
    paths = [p for entry in GENERATION for p in ((PKG / entry).rglob("*.py") if (PKG / entry).is_dir()
                                                 else [PKG / entry])]
    found = [f"{path.relative_to(ROOT)}: {name}" for path in paths for name in _imported_modules(path)
             if _under(name, ("openjanus.train",))]
    assert not found, "generation and serving must not import the training package:\n" + "\n".join(found)
    loaded = _loaded_by("openjanus.batch_job")
    assert not [m for m in loaded if _under(m, ("openjanus.train",))], loaded


def test_ray_is_imported_by_the_ray_serve_module_alone() -> None:
    """The cluster extra stays optional: only openjanus/serve/ray_app.py imports Ray, and loading
    the CLI (every command registered), the server app and the batch job loads no Ray."""
    package = ROOT / "openjanus"
    found = [f"{path.relative_to(ROOT)}: {name}" for path in sorted(package.rglob("*.py"))
             if path != package / "serve" / "ray_app.py"
             for name in _imported_modules(path) if name == "ray" or name.startswith("ray.")]
    assert not found, "only openjanus/serve/ray_app.py may import Ray:\n" + "\n".join(found)
    code = ("import json, sys\nimport openjanus.cli, openjanus.batch_job, openjanus.serve.app\n"
            "openjanus.cli.build_parser()\nprint(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert [m for m in json.loads(out.stdout) if m == "ray" or m.startswith("ray.")] == []


def test_only_the_cli_and_server_import_posttrain() -> None:
    """Post-training (`openjanus.posttrain`: online sampling for GRPO, best-of-N) sits above
    training and inference: only itself, the command line and the server import it."""
    found = [f"{path.relative_to(ROOT)}: {name}" for path in sorted(PKG.rglob("*.py"))
             if not str(path.relative_to(PKG)).startswith(POSTTRAIN_USERS)
             for name in _imported_modules(path) if _under(name, ("openjanus.posttrain",))]
    assert not found, "post-training sits above training and inference:\n" + "\n".join(found)
