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
    g = p.add_argument_group("replicas on Ray Serve (the cluster extra; see openjanus.serve.ray_app)")
    g.add_argument("--replicas", type=integer_flag(1), default=None,
                   help="serve the same app from this many replicas, one engine each, behind Ray Serve's proxy")
    g.add_argument("--min-replicas", type=integer_flag(0), default=None, help="autoscaling: fewest replicas")
    g.add_argument("--max-replicas", type=integer_flag(1), default=None, help="autoscaling: most replicas")
    g.add_argument("--target-ongoing-requests", type=number_flag(0, low_open=True), default=8.0,
                   help="autoscaling: requests in flight per replica that Ray Serve scales towards")
    g.add_argument("--max-ongoing-requests", type=integer_flag(1), default=64,
                   help="requests Ray sends one replica at once (its engine batches them); more wait in the proxy")
    g.add_argument("--replica-cpus", type=number_flag(0, low_open=True), default=1.0,
                   help="CPUs Ray reserves per replica (on CPU devices also its torch threads)")
    g.add_argument("--replica-gpus", type=number_flag(0), default=None,
                   help="GPUs Ray reserves per replica (default: 1 on CUDA devices, else 0)")
    g.add_argument("--ray-address", default=None,
                   help="a running Ray cluster to join (auto, or ray://HOST:10001); default: start a local one")
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
    if args.replicas is not None or args.min_replicas is not None or args.max_replicas is not None:
        _serve_on_ray(args)
        return
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


def _serve_on_ray(args: argparse.Namespace) -> None:
    """`serve --replicas N` / `--min-replicas --max-replicas`: the same app on Ray Serve replicas."""
    import dataclasses
    import math

    from openjanus.devices import resolve_device

    try:
        from openjanus.serve import ray_app
    except ModuleNotFoundError as e:
        raise UserError(f"--replicas needs the cluster extra ({e.name} is missing): pip install -e '.[cluster]'") \
            from None
    on_gpu = resolve_device(args.device).type == "cuda"
    gpus = args.replica_gpus if args.replica_gpus is not None else (1.0 if on_gpu else 0.0)
    settings = ServeSettings(api_key=args.api_key or os.environ.get("OPENJANUS_API_KEY") or None,
                             max_body_bytes=args.max_body_mb * 2**20, max_n=args.max_n,
                             allow_remote_images=args.allow_remote_images)
    # Each replica sees only its own GPU (Ray sets CUDA_VISIBLE_DEVICES), as cuda:0.
    model = dataclasses.replace(ModelOptions.from_args(args), device="cuda" if on_gpu else args.device)
    spec = ray_app.ReplicaSpec(model=model, engine=EngineOptions.from_args(args), model_id=args.model_id,
                               settings=settings, threads=None if on_gpu else max(1, math.floor(args.replica_cpus)))
    scale = ray_app.ScaleSpec(replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                              target_ongoing_requests=args.target_ongoing_requests,
                              max_ongoing_requests=args.max_ongoing_requests, num_cpus=args.replica_cpus,
                              num_gpus=gpus, graceful_shutdown_s=args.shutdown_grace)
    scale.deployment_options()  # bad bounds fail here, before Ray starts
    ray_app.run(spec, scale, host=args.host, port=args.port, address=args.ray_address)
