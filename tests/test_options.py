"""One options path for every command (`openjanus.options`): each command that loads a model
takes --roles and builds its prompts with it; every flag with a default shows it in --help; the
command modules do not import the CLI; number flags and typed requests share one set of checks."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from openjanus.cli import build_parser, main
from openjanus.errors import UserError
from openjanus.inference.engine import EngineConfig
from openjanus.numbers import check_integer, check_number
from openjanus.processing import JanusProcessor
from openjanus.requests import ChatRequest, ImageRequest, SamplingParams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes_files(tmp_path_factory):
    """GenEval metadata and the understanding benchmark's files (POPE questions, images, MME)."""
    out = tmp_path_factory.mktemp("shapes")
    assert main(["eval", "write-shapes", "--per-category", "1", "--images", "2", "--out", str(out)]) == 0
    return out


def _commands(files: Path) -> list[list[str]]:
    und = files / "understanding"
    return [
        ["chat", "what is this?"],
        ["generate", "--out", "OUT", "a red circle"],
        ["demo", "--out", "OUT"],
        ["eval", "geneval-shapes", "--out", "OUT"],
        ["eval", "pope-shapes", "--out", "OUT", "--images", "2"],
        ["eval", "geneval", "--metadata", str(files / "geneval" / "evaluation_metadata.jsonl"), "--out", "OUT"],
        ["eval", "pope", "--questions", str(und / "pope" / "shapes_pope_random.json"), "--images",
         str(und / "images"), "--out", "OUT"],
        ["eval", "mme", "--root", str(und / "mme"), "--out", "OUT"],
        ["serve"],
    ]


class _PromptSpy:
    """Records every prompt the processor formats (chat and text-to-image), then stops the
    command: the prompt is all this test needs."""

    def __init__(self, monkeypatch) -> None:
        self.prompts: list[str] = []
        real_t2i = JanusProcessor.t2i_prompt

        def t2i_prompt(proc, prompt):
            self.prompts.append(real_t2i(proc, prompt))
            raise UserError("stop here")

        def encode_prompt(proc, prompt, *args, **kwargs):
            self.prompts.append(prompt)
            raise UserError("stop here")

        monkeypatch.setattr(JanusProcessor, "t2i_prompt", t2i_prompt)
        monkeypatch.setattr(JanusProcessor, "encode_prompt", encode_prompt)


def _serve_one_of_each(monkeypatch) -> None:
    """`openjanus serve` runs its app in-process for one chat and one image request instead of
    listening on a port."""
    import uvicorn
    from fastapi.testclient import TestClient

    def run(server, *args, **kwargs):
        with TestClient(server.config.app) as client:
            client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
            client.post("/v1/images/generations", json={"prompt": "a red circle"})

    monkeypatch.setattr(uvicorn.Server, "run", run)


@pytest.mark.parametrize("roles,user", [("legacy", "User:"), ("pro", "<|User|>:")])
def test_every_command_that_builds_a_prompt_uses_the_roles_given(roles, user, shapes_files, monkeypatch, tmp_path):
    pytest.importorskip("fastapi")
    spy = _PromptSpy(monkeypatch)
    _serve_one_of_each(monkeypatch)
    for argv in _commands(shapes_files):
        spy.prompts.clear()
        argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv] + ["--model", "tiny", "--roles", roles]
        main(argv)
        assert spy.prompts, f"{argv[:2]} built no prompt"
        for prompt in spy.prompts:
            assert user in prompt, (argv[:2], prompt)
            other = "<|User|>:" if roles == "legacy" else "\nUser:"
            assert other not in prompt and not prompt.startswith(other.strip()), (argv[:2], prompt)
        if argv[0] == "serve":  # one chat and one image prompt
            assert len(spy.prompts) == 2 and any(p.rstrip().endswith("<begin_of_image>") for p in spy.prompts)


@pytest.mark.parametrize("argv", [
    ["vq", "IMG"],
    ["eval", "scorer-accuracy", "-n", "1"],
])
def test_commands_that_build_no_prompt_still_load_the_roles_given(argv, monkeypatch, tmp_path):
    """vq and the scorer's VQ round trip format no prompt; the pipeline they load has the roles."""
    from PIL import Image

    from openjanus.inference.pipeline import JanusPipeline

    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)
        raise UserError("stop here")

    monkeypatch.setattr(JanusPipeline, "load", fake_load)
    argv = [str(image) if a == "IMG" else a for a in argv]
    assert main(argv + ["--model", "tiny", "--roles", "legacy", "--check-finite"]) == 2
    assert seen["roles"] == "legacy" and seen["check_finite"] is True


def test_serve_reads_check_finite_from_its_flags(monkeypatch):
    from openjanus.inference.pipeline import JanusPipeline

    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)
        raise UserError("stop here")

    monkeypatch.setattr(JanusPipeline, "load", fake_load)
    assert main(["serve", "--model", "tiny", "--check-finite"]) == 2
    assert seen["check_finite"] is True and seen["roles"] == "pro"


@pytest.mark.parametrize("argv", [
    ["generate", "--out", "OUT", "p"],
    ["chat", "q"],
    ["serve"],
    ["demo", "--out", "OUT"],
    ["eval", "geneval-shapes", "--out", "OUT"],
    ["eval", "pope-shapes", "--out", "OUT"],
])
def test_engine_flags_reach_the_engine(argv, monkeypatch, tmp_path):
    from openjanus.inference.pipeline import JanusPipeline

    started = []

    def start_engine(pipe, config):
        started.append(config)
        raise UserError("stop here")

    monkeypatch.setattr(JanusPipeline, "start_engine", start_engine)
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv + ["--model", "tiny", "--rows", "6", "--kv-cache-gib", "0.5", "--queue", "3", "--compile"]) == 2
    assert started == [EngineConfig(rows=6, kv_cache_gib=0.5, queue=3, compile=True)]


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_flag_with_a_default_shows_it_in_help():
    checked = 0
    for path, parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            default = action.default
            if (default in (None, False, [], argparse.SUPPRESS) or action.help == argparse.SUPPRESS
                    or not action.option_strings):
                continue
            assert f"(default: {default})" in text, (path, action.option_strings, default)
            checked += 1
    assert checked > 60


def test_defaults_are_read_from_the_typed_requests_and_configs():
    generate = build_parser().parse_args(["generate", "--out", "o", "p"])
    assert (generate.guidance, generate.n, generate.temperature, generate.jacobi) == (
        ImageRequest.guidance, ImageRequest.n, ImageRequest.sampling.temperature, ImageRequest.jacobi)
    assert (generate.rows, generate.kv_cache_gib, generate.queue, generate.compile) == (
        EngineConfig.rows, EngineConfig.kv_cache_gib, EngineConfig.queue, EngineConfig.compile)
    chat = build_parser().parse_args(["chat", "q"])
    assert (chat.temperature, chat.max_new_tokens) == (ChatRequest.sampling.temperature, ChatRequest.max_new_tokens)
    geneval = build_parser().parse_args(["eval", "geneval-shapes", "--out", "o"])
    assert geneval.guidance == ImageRequest.guidance and geneval.rows == EngineConfig.rows


def test_no_command_module_imports_the_cli():
    """The CLI imports the command modules (each has `register(subparsers)`), never the reverse."""
    found = []
    for path in sorted((ROOT / "openjanus").rglob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "openjanus.cli":
                found.append(str(path.relative_to(ROOT)))
            elif isinstance(node, ast.Import) and any(a.name == "openjanus.cli" for a in node.names):
                found.append(str(path.relative_to(ROOT)))
    assert not found, found


def test_flags_and_requests_share_one_set_of_number_checks(capsys):
    # The same phrase from a flag (argparse names the flag) and from a typed request (named value).
    with pytest.raises(UserError, match=r"^top_k must be >= 0, got -1$"):
        SamplingParams(top_k=-1)
    with pytest.raises(SystemExit):
        main(["generate", "--out", "o", "--top-k", "-1", "p"])
    assert "argument --top-k: must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"^top_p must be in \(0, 1\], got 0$"):
        SamplingParams(top_p=0)
    with pytest.raises(UserError, match=r"^guidance must be a finite number, got nan$"):
        ImageRequest("x", guidance=float("nan"))
    assert check_number(1, low=0, high=1) == 1.0 and check_integer(3, low=1) == 3
    for bad in (True, "1", None):
        with pytest.raises(UserError, match="must be a number"):
            check_number(bad)
        with pytest.raises(UserError, match="must be an integer"):
            check_integer(bad)
    with pytest.raises(UserError, match=r"^must be an integer, got 1\.0$"):
        check_integer(1.0)
    with pytest.raises(UserError, match=r"^x must be > 0, got 0$"):
        check_number(0, low=0, low_open=True, name="x")
