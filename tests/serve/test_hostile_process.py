"""`openjanus serve` as a process under careless operators and slow clients (issue 23): an empty
API key is refused at start, and SIGTERM with slow clients connected exits promptly and cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from processes import free_port

from openjanus.cli import main


@pytest.mark.parametrize("argv,env", [(["--api-key", ""], {}), (["--api-key", "  "], {}),
                                      ([], {"OPENJANUS_API_KEY": ""})])
def test_an_empty_api_key_is_refused_at_start(argv, env, monkeypatch, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    started = time.perf_counter()
    assert main(["serve", "--model", "tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert "api key" in err.lower() and "empty" in err.lower()
    assert time.perf_counter() - started < 5  # before the model loads


def test_sigterm_with_slow_clients_exits_promptly_and_cleanly():
    port = free_port()
    code = "import sys; from openjanus.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--model", "tiny", "--port", str(port),
                             "--shutdown-grace", "30", "--header-timeout", "60", "--body-timeout", "60"],
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None and time.time() < deadline, "the server did not come up"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        slow = []
        for _ in range(5):  # half-sent headers
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(s)
        for _ in range(5):  # half-sent bodies
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mess")
            slow.append(s)
        time.sleep(0.5)
        started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.perf_counter() - started
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        # Waiting for the slow clients would take the grace period (30 s) or their timeouts (60 s);
        # an exit that does not wait takes ~1.3 s on an idle 2-core machine and 7 s on a loaded one.
        assert took < 15, f"SIGTERM took {took:.1f} s with slow clients connected"
        for s in slow:
            s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ray_serves_app_builder_refuses_an_empty_api_key():
    pytest.importorskip("ray")
    from openjanus.errors import UserError
    from openjanus.serve.ray_app import app_builder

    with pytest.raises(UserError, match="api_key is empty"):
        app_builder({"api_key": " "})
