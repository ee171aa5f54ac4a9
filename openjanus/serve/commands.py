"""`openjanus serve`: the CLI face of `openjanus.serve.app`."""

from __future__ import annotations

import argparse
import os

from openjanus.errors import UserError


def register(sub) -> None:
    from openjanus.cli import add_model_flags, int_range

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server and web page")
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int_range(1, 65535), default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $OPENJANUS_API_KEY, else none)")
    p.add_argument("--model-id", default=None, help="the model name clients see (default: the folder's name)")
    p.add_argument("--max-n", type=int_range(1, 1000), default=8, help="most images per generation request")
    p.add_argument("--max-queue", type=int_range(1), default=256, help="requests waiting beyond the batch; more get 429")
    p.add_argument("--batch-rows", type=int_range(2), default=64, help="LLM rows decoded together (2 per image)")
    p.add_argument("--max-body-mb", type=int_range(1), default=20, help="request body limit")
    p.add_argument("--allow-remote-images", action="store_true", help="accept http(s) image URLs (not fetched yet)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    """Load the model, then serve it until SIGTERM / Ctrl-C (running requests are cancelled cleanly)."""
    try:
        import uvicorn

        from openjanus.serve.app import ServeSettings, create_app
    except ModuleNotFoundError as e:
        raise UserError(f"openjanus serve needs the serve extra ({e.name} is missing): "
                        "pip install -e '.[serve]'") from None
    from openjanus.engine import EngineConfig
    from openjanus.pipeline import JanusPipeline

    pipe = JanusPipeline.load(args.model, device=args.device, dtype=args.dtype,
                              check_finite=getattr(args, "check_finite", False))
    pipe.start_engine(EngineConfig(max_rows=args.batch_rows, max_queue=args.max_queue))
    settings = ServeSettings(model_id=args.model_id or pipe.name,
                             api_key=args.api_key or os.environ.get("OPENJANUS_API_KEY") or None,
                             max_body_bytes=args.max_body_mb * 2**20, max_n=args.max_n,
                             allow_remote_images=args.allow_remote_images)
    uvicorn.run(create_app(pipe, settings), host=args.host, port=args.port, timeout_graceful_shutdown=30,
                log_level="info")
