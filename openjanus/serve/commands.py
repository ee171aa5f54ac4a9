"""`openjanus serve`: the CLI face of `openjanus.serve.app`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from openjanus.errors import UserError
from openjanus.inference.engine import EngineConfig
from openjanus.options import EngineOptions, ModelOptions, default_of, integer_flag, number_flag, open_pipeline
from openjanus.serve.protocol import ServeSettings


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server and web page")
    ModelOptions.add_to(p)
    EngineOptions.add_to(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=integer_flag(1, 65535), default=8000, help="port to listen on")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $OPENJANUS_API_KEY, else none)")
    p.add_argument("--model-id", default=None, help="the model name clients see (default: the folder's name)")
    p.add_argument("--max-n", type=integer_flag(1, default_of(EngineConfig, "max_n")),
                   default=default_of(ServeSettings, "max_n"), help="most images per generation request (n)")
    p.add_argument("--max-body-mb", type=integer_flag(1), default=default_of(ServeSettings, "max_body_bytes") // 2**20,
                   help="request body limit")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="fetch http(s) image URLs in chat messages (bounded in size and time; off: data: URLs only)")
    p.add_argument("--shutdown-grace", type=number_flag(0), default=30.0,
                   help="on SIGTERM/Ctrl-C, seconds running requests get to finish before they are cancelled")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    """Load the model, then serve it until SIGTERM / Ctrl-C: running requests get --shutdown-grace
    seconds to finish, then are cancelled cleanly."""
    try:
        import uvicorn  # noqa: F401 (the serve extra: checked before the model loads)

        import openjanus.serve.app  # noqa: F401
    except ModuleNotFoundError as e:
        raise UserError(f"openjanus serve needs the serve extra ({e.name} is missing): "
                        "pip install -e '.[serve]'") from None

    with open_pipeline(args) as pipe:
        _serve(pipe, args)


def _serve(pipe, args: argparse.Namespace) -> None:
    import uvicorn

    from openjanus.serve.app import create_app

    settings = ServeSettings(model_id=args.model_id or pipe.name,
                             api_key=args.api_key or os.environ.get("OPENJANUS_API_KEY") or None,
                             max_body_bytes=args.max_body_mb * 2**20, max_n=args.max_n,
                             allow_remote_images=args.allow_remote_images)
    grace, stopping = args.shutdown_grace, []

    class Server(uvicorn.Server):
        # On SIGTERM/SIGINT uvicorn stops accepting connections and waits for the running requests.
        # Those still running after the grace period are cancelled in the engine, so each one ends
        # its own response (a 503, or a stream's error event) instead of uvicorn killing its task.
        def handle_exit(self, sig: int, frame) -> None:
            if not stopping:
                timer = threading.Timer(grace, cancel_the_rest)
                timer.daemon = True
                timer.start()
                stopping.append(timer)
            super().handle_exit(sig, frame)

    app = create_app(pipe, settings)

    def cancel_the_rest() -> None:
        app.state.cancel_running()  # first the requests themselves, then the engine
        try:
            pipe.engine.close(cancel=True)
        except Exception as e:  # the requests are cancelled already; the app's shutdown closes it again
            print(f"warning: closing the engine failed: {type(e).__name__}: {e}", file=sys.stderr)

    server = Server(uvicorn.Config(app, host=args.host, port=args.port,
                                   timeout_graceful_shutdown=grace + 10, log_level="info"))
    # uvicorn re-raises the signal that stopped it once it is done; handling SIGTERM here makes the
    # end of a clean shutdown a normal exit (status 0) rather than death by signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for timer in stopping:
            timer.cancel()
