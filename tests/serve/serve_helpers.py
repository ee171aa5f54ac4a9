"""Helpers shared by the server's tests (images as data URLs, a server on a real socket)."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import uvicorn
from PIL import Image


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def scene(colour=(200, 30, 30), size: int = 48) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    img.paste(colour, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return img


def pixels(b64: str):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@contextmanager
def running(app, grace: float = 2.0):
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=grace))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
