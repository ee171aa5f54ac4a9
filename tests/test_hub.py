"""`--model owner/name[@revision]` through huggingface_hub, against a hub on a loopback port
(HF_ENDPOINT) and against the cache it leaves, offline; run as a user runs it (the CLI in a
subprocess, its own HF_HOME)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_tiny_checkpoint
from hub_server import FakeHub

from openjanus.hub import parse_hub_id

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "openjanus" / "assets" / "janus-shapes"


def test_parse_hub_id():
    assert parse_hub_id("deepseek-ai/Janus-Pro-1B") == ("deepseek-ai/Janus-Pro-1B", None)
    assert parse_hub_id("deepseek-ai/Janus-Pro-1B@main") == ("deepseek-ai/Janus-Pro-1B", "main")
    assert parse_hub_id("acme/m@3f2a9c1") == ("acme/m", "3f2a9c1")
    for not_an_id in ("janus-shapes", "tiny", "./a/b", "/abs/path", "~/m/x", "a/b/c", "a/b@", "a /b"):
        assert parse_hub_id(not_an_id) is None, not_an_id


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Two revisions of one hub model: the tiny test checkpoint (main) and the demo model (v2)."""
    return {"acme/shapes": {"main": write_tiny_checkpoint(tmp_path_factory.mktemp("hub-main")), "v2": DEMO}}


def _info(model: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`openjanus info --model MODEL`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "openjanus.cli", "info", "--model", model, "--dtype", "float32"],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _fetch(model: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The resolution alone (no torch import, so it takes a second): prints the local folder."""
    code = ("import sys; from openjanus.errors import UserError; from openjanus.hub import download\n"
            "try: print(download(sys.argv[1]))\nexcept UserError as e: sys.exit(f'error: {e}')")
    return subprocess.run([sys.executable, "-c", code, model], env=env, capture_output=True, text=True, timeout=120)


def _same_files(folder: str | Path, reference: Path) -> bool:
    folder = Path(folder.strip()) if isinstance(folder, str) else folder
    names = sorted(p.name for p in reference.iterdir())
    return sorted(p.name for p in folder.iterdir()) == names and all(
        (folder / n).read_bytes() == (reference / n).read_bytes() for n in names)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def test_hub_id_fetches_from_the_endpoint_then_loads_offline_from_the_cache(repos, tmp_path):
    with FakeHub(repos) as hub:
        env = _env(tmp_path, HF_ENDPOINT=hub.url)
        main, v2 = _fetch("acme/shapes", env), _fetch("acme/shapes@v2", env)
        assert main.returncode == 0 and v2.returncode == 0, main.stderr + v2.stderr
        assert any(r.startswith("GET") and r.endswith("/model.safetensors") for r in hub.requests)
        # The CLI, end to end: `--model owner/name` loads what the hub serves.
        cli = _info("acme/shapes@v2", env, tmp_path)
        assert cli.returncode == 0, cli.stderr
    # Each revision is its own snapshot, byte for byte the folder the hub served.
    assert _same_files(main.stdout, repos["acme/shapes"]["main"]) and _same_files(v2.stdout, DEMO)
    assert f"model: {v2.stdout.strip()}" in cli.stdout
    # The hub is gone: HF_HUB_OFFLINE=1 finds each revision in the cache the first runs filled.
    offline = _env(tmp_path, HF_HUB_OFFLINE="1")
    for model, first in (("acme/shapes", main), ("acme/shapes@v2", v2)):
        again = _fetch(model, offline)
        assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    # A revision never fetched is not in the cache: one line.
    missing = _fetch("acme/shapes@v9", offline)
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0
    assert "not in the local cache" in missing.stderr


def test_a_prefilled_cache_loads_offline(tmp_path):
    """A cache laid out as huggingface_hub lays it out (refs/main -> snapshots/<commit>), filled
    by hand as a machine image or a shared cache would be: no hub was ever reached."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-home" / "hub" / "models--acme--cached"
    shutil.copytree(DEMO, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = _info("acme/cached", _env(tmp_path, HF_HUB_OFFLINE="1"), tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"snapshots/{commit}" in out.stdout


def test_unknown_model_and_revision_are_one_line_errors(repos, tmp_path):
    with FakeHub(repos) as hub:
        env = _env(tmp_path, HF_ENDPOINT=hub.url)
        for model, message in (("acme/nothing", "no hub model acme/nothing"),
                               ("acme/shapes@v9", "has no revision 'v9'")):
            r = _fetch(model, env)
            assert r.returncode != 0 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
            assert r.stderr.strip().count("\n") == 0, r.stderr
        # The CLI's own error line and exit code.
        r = _info("acme/nothing", env, tmp_path)
        assert r.returncode == 2 and r.stderr.strip() == f"error: {_fetch('acme/nothing', env).stderr[7:].strip()}"


def test_a_folder_wins_over_a_hub_id(repos, tmp_path):
    """./acme/shapes exists: it is loaded, and the hub is never asked."""
    shutil.copytree(DEMO, tmp_path / "acme" / "shapes")
    with FakeHub(repos) as hub:
        r = _info("acme/shapes", _env(tmp_path, HF_ENDPOINT=hub.url), tmp_path)
        assert r.returncode == 0, r.stderr
        assert hub.requests == []
    assert "model: acme/shapes" in r.stdout


def test_pipeline_load_names_the_model_by_its_hub_id(tmp_path):
    """JanusPipeline.load("owner/name"): the Python API resolves it the same way."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--cached"
    shutil.copytree(DEMO, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("from openjanus.inference.pipeline import JanusPipeline\n"
            "p = JanusPipeline.load('acme/cached', device='cpu', dtype='float32')\n"
            "print(p.name, p.card.examples.prompts[0])")
    r = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(
        tmp_path / "hub")), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # Named by its hub id (not the snapshot's hash), and its model card came with the weights.
    assert r.stdout.strip() == "acme/cached a photo of a red circle left of a blue square"
