"""`openjanus serve`: flags and defaults, a clear message without the extra, and a real process
that shuts down cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from openjanus.cli import build_parser, main


def test_defaults_bind_loopback():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model, args.api_key) == ("127.0.0.1", 8000, None, None)
    assert not args.allow_remote_images


def test_missing_extra_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert main(["serve", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'openjanus[serve]'" in err and "uvicorn" in err


def test_bad_flag_values(capsys):
    assert main(["serve", "--model", "tiny", "--max-queue", "0"]) == 2
    assert "--max-queue must be >= 1" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_short_requests_and_cancels_long_ones(tmp_path):
    port = free_port()
    env = {**os.environ, "OPENJANUS_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "openjanus.serve", "--model", "tiny", "--port", str(port),
                             "--max-images", "400", "--shutdown-grace", "3",
                             # one image per chunk leaves a row free for a chat beside the long request
                             "--max-rows", "3", "--log-level", "warning"],
                            stderr=subprocess.PIPE, text=True, env=env)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401  # the key came from OPENJANUS_API_KEY
        outcome: dict = {}

        def long_request():  # ~400 images: far longer than the grace period
            try:
                with httpx.stream("POST", f"{url}/v1/images/generations", headers=auth, timeout=60,
                                  json={"prompt": "x", "n": 400, "stream": True, "partial_images": 1}) as r:
                    outcome["long_status"] = r.status_code
                    events = [line for line in r.iter_lines() if line.startswith("data: ")]
                    outcome["long_events"], outcome["last"] = len(events), events[-1] if events else ""
            except httpx.HTTPError as e:
                outcome["long_error"] = type(e).__name__

        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(1.0)
        # A short request running when SIGTERM comes finishes within the grace period.
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers=auth, timeout=30,
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True,
                                "stop": [], "temperature": 1, "seed": 0}) as r:
            lines = r.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
        assert first.startswith("data: ") and rest[-1] == "data: [DONE]"
        rc = proc.wait(timeout=30)
        worker.join(30)
        err = proc.stderr.read()
        assert rc == 0, err
        assert "Traceback" not in err, err
        # The long one is cancelled after the grace period: its stream ends with an error event.
        assert outcome.get("long_status") == 200, outcome
        assert 0 < outcome["long_events"] < 400 and "server_shutting_down" in outcome["last"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
