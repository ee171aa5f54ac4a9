"""`openjanus serve`: the OpenAI-compatible API and the web page, on uvicorn.

FastAPI and uvicorn are imported inside the command, so the rest of the CLI works without the
`serve` extra and only `openjanus serve` asks for it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading

from openjanus.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from openjanus.cli import add_model_flags

    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API, with a web page at /",
                       description="Chat about images (/v1/chat/completions) and generate images "
                                   "(/v1/images/generations) with any OpenAI client; open http://HOST:PORT/ in a "
                                   "browser for both. Needs: pip install 'openjanus[serve]'.")
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $OPENJANUS_API_KEY, else none)")
    p.add_argument("--model-id", default=None, help="the model id clients see (default: the model folder's name)")
    p.add_argument("--max-rows", type=int, default=16, help="LLM rows decoded together (an image takes two)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch; more get 429")
    p.add_argument("--max-images", type=int, default=4, help="largest n of one image request")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body, in MiB (413 beyond)")
    p.add_argument("--max-image-mb", type=float, default=10.0, help="largest encoded image in a chat, in MiB")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="largest decoded image (width x height) in a chat; guards against decompression bombs")
    p.add_argument("--max-chat-images", type=int, default=8, help="images in one chat request")
    p.add_argument("--max-prompt-chars", type=int, default=16_000, help="longest prompt text, in characters")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="fetch http(s) image URLs in chat messages (off: only data: URLs are accepted)")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds running requests get to finish on SIGTERM before they are cancelled")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_serve(args: argparse.Namespace) -> None:
    """Load the model, start the engine and serve until SIGINT/SIGTERM."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise UserError(f"openjanus serve needs the serve extra ({e.name} is missing): "
                        "pip install 'openjanus[serve]'") from None
    from openjanus.engine import EngineConfig
    from openjanus.pipeline import JanusPipeline
    from openjanus.serve.app import ServeConfig, create_app
    from openjanus.serve.convert import ImageLimits

    for name in ("max_rows", "max_queue", "max_images", "max_image_pixels", "max_chat_images", "max_prompt_chars"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_body_mb <= 0 or args.max_image_mb <= 0:
        raise UserError("--max-body-mb and --max-image-mb must be > 0")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    api_key = args.api_key or os.environ.get("OPENJANUS_API_KEY") or None
    if not _is_loopback(args.host) and api_key is None:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach it can use it "
              "(set --api-key or OPENJANUS_API_KEY)", file=sys.stderr)

    pipe = JanusPipeline.load(args.model, device=args.device, dtype=args.dtype)
    pipe.start_engine(EngineConfig(max_rows=args.max_rows, max_queue=args.max_queue, max_images=args.max_images))
    config = ServeConfig(
        model_id=args.model_id, api_key=api_key, max_body_bytes=int(args.max_body_mb * 2**20),
        images=ImageLimits(max_bytes=int(args.max_image_mb * 2**20), max_pixels=args.max_image_pixels,
                           max_images=args.max_chat_images, allow_remote=args.allow_remote_images),
        max_prompt_chars=args.max_prompt_chars, max_images_per_request=args.max_images)
    app = create_app(pipe, config, close_engine=True)
    grace = max(args.shutdown_grace, 0.0)
    stopping: list[threading.Timer] = []

    class Server(uvicorn.Server):
        # On SIGINT/SIGTERM uvicorn stops accepting connections and waits for running requests.
        # Those still running after the grace period are cancelled in the engine, so each ends
        # its own response cleanly (a stream ends with an error event) instead of being killed.
        def handle_exit(self, sig: int, frame) -> None:
            if not stopping:
                timer = threading.Timer(grace, pipe.engine.close, kwargs={"cancel": True})
                timer.daemon = True
                timer.start()
                stopping.append(timer)
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                   timeout_graceful_shutdown=grace + 10))
    print(f"openjanus: serving {config.model_id or pipe.name} on http://{args.host}:{args.port}/ "
          f"(OpenAI API under /v1)", file=sys.stderr, flush=True)
    # uvicorn re-raises the signal that stopped it once it is done; a SIGTERM handled here makes
    # that a normal exit (status 0) after the clean shutdown above.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for timer in stopping:
            timer.cancel()
