"""`openjanus serve` as a real process: SIGTERM lets a running request finish within the grace
period, cancels the one that runs longer (its stream ends with an error event) and exits 0."""

from __future__ import annotations

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
    assert (args.host, args.port, args.model, args.api_key, args.shutdown_grace) == ("127.0.0.1", 8000, None, None, 30)


def test_missing_extra_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert main(["serve", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "[serve]" in err and "uvicorn is missing" in err


def test_sigterm_finishes_short_requests_and_cancels_long_ones():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "import sys; from openjanus.cli import main; sys.exit(main(sys.argv[1:]))"
    # --rows 3: the long request runs one image at a time and leaves a row for a chat.
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--model", "tiny", "--port", str(port),
                             "--max-n", "400", "--rows", "3", "--shutdown-grace", "3"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OPENJANUS_API_KEY": "k"})
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

        def long_request():  # 400 images one at a time: far longer than the grace period
            with httpx.stream("POST", f"{url}/v1/images/generations", headers=auth, timeout=60,
                              json={"prompt": "x", "n": 400, "stream": True, "partial_images": 1}) as r:
                outcome["status"] = r.status_code
                outcome["events"] = [line for line in r.iter_lines() if line.startswith("data: ")]

        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(1.0)
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers=auth, timeout=30,
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100,
                                "stream": True}) as r:
            lines = r.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)  # while the chat runs
            rest = [line for line in lines if line.startswith("data: ")]
        assert first.startswith("data: ") and rest[-1] == "data: [DONE]"  # it finished
        rc = proc.wait(timeout=30)
        worker.join(30)
        err = proc.stderr.read()
        assert rc == 0, err
        assert "Traceback" not in err, err
        assert outcome["status"] == 200 and 0 < len(outcome["events"]) < 400
        assert "server_shutting_down" in outcome["events"][-1]  # cancelled, and told so
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
