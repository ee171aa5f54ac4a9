"""A soak of `openjanus serve`: mixed clients for minutes, RSS over time, then idle.

    python bench/soak_serve.py                              # demo model, 16 clients, 2 x 180 s
    python bench/soak_serve.py --clients 16 --seconds 180 --rounds 2 --every 10
    python bench/soak_serve.py --model DIR --dtype bfloat16 --json soak.json

Starts the server as a subprocess on a free 127.0.0.1 port and reads its resident memory from
/proc. Each round runs --clients threads for --seconds, each looping over a mix: image
generations (n 1-4, some streamed with partial images), chats about an image, streamed chats,
clients that close the socket mid-request (streaming and not), and bad requests (malformed
JSON, huge text, bad images, unknown paths). Between rounds, and after the last, the server is
left idle for --idle seconds. Printed: RSS every --every seconds, each round's requests by
outcome, and idle RSS before and after; the exit status is 1 if any answer was a 500 or the
server died.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import free_port, wait_up  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _png_url(size: int, colour: str) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Driver:
    """Mixed clients against `url`; counts outcomes by kind and status."""

    def __init__(self, url: str, model: str, seed: int = 0) -> None:
        self.url, self.model = url, model
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.images = [_png_url(s, c) for s, c in ((64, "red"), (200, "navy"), (640, "yellow"))]

    def _count(self, kind: str, status: int | str) -> None:
        with self.lock:
            self.counts[f"{kind} {status}"] += 1

    def _post(self, client: httpx.Client, kind: str, path: str, **kw) -> None:
        try:
            r = client.post(self.url + path, **kw)
            self._count(kind, r.status_code)
        except httpx.HTTPError as e:
            self._count(kind, type(e).__name__)

    def _leave(self, path: str, body: dict, after: float) -> None:
        """Send a request, then close the socket without reading the answer."""
        host, port = self.url.removeprefix("http://").split(":")
        raw = json.dumps(body).encode()
        try:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
                time.sleep(after)
            self._count("disconnect", "sent")
        except OSError as e:
            self._count("disconnect", type(e).__name__)

    def one(self, client: httpx.Client, rng: random.Random) -> None:
        kind = rng.choices(["image", "image-stream", "chat", "chat-stream", "leave", "leave-stream", "bad"],
                           weights=[4, 1, 3, 2, 1, 1, 2])[0]
        prompt = rng.choice(["a red circle", "two blue squares", "a green star above a yellow triangle"])
        if kind == "image":
            self._post(client, kind, "/v1/images/generations",
                       json={"model": self.model, "prompt": prompt, "n": rng.randint(1, 4), "seed": rng.randint(0, 9)})
        elif kind == "image-stream":
            with client.stream("POST", self.url + "/v1/images/generations",
                               json={"prompt": prompt, "stream": True, "partial_images": 2}) as r:
                for _ in r.iter_bytes():
                    pass
                self._count(kind, r.status_code)
        elif kind == "chat":
            self._post(client, kind, "/v1/chat/completions",
                       json={"model": self.model, "max_tokens": rng.randint(1, 24), "temperature": rng.random(),
                             "messages": [{"role": "user", "content": [
                                 {"type": "image_url", "image_url": {"url": rng.choice(self.images)}},
                                 {"type": "text", "text": "what is in this picture?"}]}]})
        elif kind == "chat-stream":
            with client.stream("POST", self.url + "/v1/chat/completions",
                               json={"messages": [{"role": "user", "content": "describe a " + prompt}],
                                     "max_tokens": 32, "stream": True}) as r:
                for _ in r.iter_bytes():
                    pass
                self._count(kind, r.status_code)
        elif kind == "leave":
            self._leave("/v1/images/generations", {"prompt": prompt, "n": 4}, rng.uniform(0.05, 0.5))
        elif kind == "leave-stream":
            self._leave("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}],
                                                 "max_tokens": 200, "stream": True}, rng.uniform(0.05, 0.5))
        else:
            bad = rng.choice([
                ("/v1/chat/completions", b"{not json", "application/json"),
                ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x" * 3_000_000}]})
                 .encode(), "application/json"),
                ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}).encode(),
                 "application/json"),
                ("/v1/images/generations", b'{"prompt": "a star", "n": 999}', "application/json"),
                ("/v1/images/generations", b'{"prompt": "a star"}', "text/plain"),
                (f"/v1/nowhere/{rng.randint(0, 10**9)}", b"{}", "application/json"),
            ])
            self._post(client, "bad", bad[0], content=bad[1], headers={"Content-Type": bad[2]})

    def run(self, clients: int, seconds: float) -> None:
        stop = time.time() + seconds

        def loop(k: int) -> None:
            rng = random.Random(self.rng.random() + k)
            with httpx.Client(timeout=300) as client:
                while time.time() < stop:
                    try:
                        self.one(client, rng)
                    except httpx.HTTPError as e:
                        self._count("client", type(e).__name__)

        threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    code = "import sys; from openjanus.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "serve", "--port", str(port), "--model-id", "soak"]
    if args.model:
        cmd += ["--model", args.model]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def idle(url: str, timeout: float = 120) -> bool:
    """Whether the server's engine is empty (queue and batch) within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = httpx.get(url + "/metrics", timeout=10).text
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line.startswith(("openjanus_queue_depth", "openjanus_running_requests"))}
        if values and not any(values.values()):
            return True
        time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the demo model)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=180, help="length of each round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--idle", type=float, default=20, help="idle seconds after each round")
    p.add_argument("--every", type=float, default=10, help="seconds between RSS readings")
    p.add_argument("--json", default=None, help="write the readings here")
    args = p.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    readings: list[tuple[float, str, float]] = []
    t0 = time.time()

    def read(phase: str) -> float:
        mb = rss_mb(proc.pid)
        readings.append((time.time() - t0, phase, mb))
        print(f"{time.time() - t0:7.0f} s  {phase:<10} RSS {mb:8.1f} MB", flush=True)
        return mb

    failed = False
    try:
        wait_up(url, proc)
        driver = Driver(url, "soak")
        httpx.post(url + "/v1/images/generations", json={"prompt": "warm up"}, timeout=300)
        time.sleep(2)
        start = read("idle")
        for r in range(args.rounds):
            runner = threading.Thread(target=driver.run, args=(args.clients, args.seconds))
            runner.start()
            while runner.is_alive():
                runner.join(args.every)
                read(f"round {r + 1}")
            if not idle(url):
                print("the server did not go idle after the round", flush=True)
                failed = True
            time.sleep(args.idle)
            end = read("idle")
            started = time.perf_counter()
            httpx.get(url + "/health", timeout=30)
            print(f"round {r + 1}: {sum(driver.counts.values())} requests, /health in "
                  f"{1000 * (time.perf_counter() - started):.0f} ms, idle RSS {start:.0f} -> {end:.0f} MB")
        print("outcomes:", ", ".join(f"{k}: {v}" for k, v in sorted(driver.counts.items())))
        failed |= any(k.endswith(" 500") for k in driver.counts) or proc.poll() is not None
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.json:
        Path(args.json).write_text(json.dumps({"readings": readings, "counts": driver.counts}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
