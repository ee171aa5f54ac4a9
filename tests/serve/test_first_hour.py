"""What a new user meets first, against the demo model: the same request at default settings
gives the same answer from the Python API, the CLI and the server (the page's is in
test_browser.py), all taking the model's generation_config.json; the server names its weights
(system_fingerprint), has a favicon and tells the page the model's own words; `openjanus serve`
logs a start line and one access line per request, and refuses a busy port before loading."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image
from processes import free_port

from openjanus.cli import main
from openjanus.requests import ChatRequest, ImageRequest
from openjanus.serve.protocol import png

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A rendered shapes-world scene, as a PNG file (the kind of picture the demo model knows)."""
    from openjanus.shapes.tasks import sample_scene_in_split
    from openjanus.shapes.world import render, rng_for

    path = tmp_path_factory.mktemp("scene") / "scene.png"
    render(sample_scene_in_split(rng_for(0, 9001, 2), "train", image_size=64)).save(path)
    return path


def test_the_same_question_gets_the_same_answer_from_python_cli_and_server(server, demo_pipe, scene, capsys):
    question = demo_pipe.card.example_questions[0]
    python = demo_pipe.generate(ChatRequest.ask(question, [str(scene)])).text
    assert main(["chat", "--dtype", "float32", "--image", str(scene), question]) == 0
    cli = capsys.readouterr().out.strip()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    url = "data:image/png;base64," + base64.b64encode(scene.read_bytes()).decode()
    reply = client.chat.completions.create(model="janus-shapes", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}])
    assert python == cli == reply.choices[0].message.content and python
    # The demo model answers greedily by default (generation_config.json: do_sample false).
    assert demo_pipe.card.defaults.chat.sampling.temperature == 0


def test_the_same_prompt_and_seed_give_the_same_image_from_python_cli_and_server(server, demo_pipe, tmp_path):
    prompt = demo_pipe.card.example_prompts[0]
    python = demo_pipe.generate(ImageRequest(prompt, seed=3))
    assert main(["generate", "--dtype", "float32", "--out", str(tmp_path / "cli"), "--seed", "3", prompt]) == 0
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    served = client.images.generate(model="janus-shapes", prompt=prompt, n=1, extra_body={"seed": 3})
    cli = Image.open(tmp_path / "cli" / "image_0.png")
    server_image = Image.open(io.BytesIO(base64.b64decode(served.data[0].b64_json)))
    assert python.images[0].tobytes() == cli.tobytes() == server_image.tobytes()
    assert png(python.images[0]) == served.data[0].b64_json


def test_fingerprint_favicon_and_the_model_card(server, demo_pipe):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    reply = client.chat.completions.create(model="janus-shapes", max_tokens=2,
                                           messages=[{"role": "user", "content": "how many objects are there?"}])
    assert re.fullmatch(r"fp_[0-9a-f]{12}", reply.system_fingerprint)
    assert reply.system_fingerprint == demo_pipe.fingerprint
    chunks = list(client.chat.completions.create(model="janus-shapes", max_tokens=2, stream=True,
                                                 messages=[{"role": "user", "content": "how many objects are there?"}]))
    assert {c.system_fingerprint for c in chunks} == {demo_pipe.fingerprint}
    icon = httpx.get(server.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(icon.content)).format == "ICO"
    card = httpx.get(server.url + "/model-card").json()
    assert card["examples"]["prompts"][0] == demo_pipe.card.example_prompts[0]
    assert "circle" in card["vocabulary"] and "fox" not in card["vocabulary"]
    assert card["defaults"]["chat"] == {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_tokens": 64}
    assert card["defaults"]["image"]["guidance"] == 5.0 and card["fingerprint"] == demo_pipe.fingerprint


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_a_busy_port_is_one_error_line_before_the_model_loads():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.perf_counter()
        # A model that would take long to build if it were loaded: the refusal must come first.
        r = subprocess.run([sys.executable, "-m", "openjanus.cli", "serve", "--model", "janus-pro-7b", "--port",
                            str(port)], env=_env(), capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - t0
    assert r.returncode == 2
    assert r.stderr == f"error: port {port} on 127.0.0.1 is in use (another server?); choose another with --port\n"
    assert "RANDOM weights" not in r.stderr and seconds < 60  # the 7B preset was never built


def test_serve_logs_a_start_line_and_one_json_line_per_request():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "openjanus.cli", "serve", "--port", str(port), "--dtype",
                             "float32", "--log-format", "json"], env=_env(), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        chat = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "how many objects are there?"}], "max_tokens": 3})
        assert chat.status_code == 200
        images = httpx.post(url + "/v1/images/generations", timeout=60,
                            json={"prompt": "a photo of a blue circle", "n": 2, "stream": True})
        assert images.status_code == 200
        assert httpx.get(url + "/nowhere").status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(lines) == len(err.splitlines()), err  # every line of the log is JSON
    start = next(r for r in lines if r.get("event") == "start")
    assert start["model"] == "janus-shapes" and start["weights"] == "janus-shapes, float32"
    assert start["device"] == "cpu" and start["rows"] > 0 and start["kv_cache_gib"] > 0
    assert start["address"] == f"http://127.0.0.1:{port}/" and start["fingerprint"].startswith("fp_")
    access = [r for r in lines if r.get("event") == "access"]
    by_path = {r["path"]: r for r in access}
    chat_line = by_path["/v1/chat/completions"]
    assert chat_line["status"] == 200 and chat_line["method"] == "POST" and chat_line["latency_ms"] > 0
    assert chat_line["completion_tokens"] == chat.json()["usage"]["completion_tokens"]
    assert chat_line["prompt_tokens"] == chat.json()["usage"]["prompt_tokens"]
    assert by_path["/v1/images/generations"]["images"] == 2  # a stream: logged when it ended
    assert by_path["/nowhere"]["status"] == 404
