"""`openjanus serve`: the CLI face of `openjanus.serve.app`."""

from __future__ import annotations

import argparse
import errno
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
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="the log on stderr: a start line, one access line per request, errors with tracebacks")
    p.add_argument("--allowed-hosts", default=None,
                   help="comma-separated Host header names the server answers to (DNS-rebinding guard; default: "
                        "localhost, 127.0.0.1, ::1 and --host; any name when --host is 0.0.0.0 or ::); '*' for any")
    p.add_argument("--header-timeout", type=number_flag(0, low_open=True),
                   default=default_of(ServeSettings, "header_timeout_s"),
                   help="seconds a client may take to send a request's headers before it is disconnected")
    p.add_argument("--body-timeout", type=number_flag(0, low_open=True),
                   default=default_of(ServeSettings, "body_timeout_s"),
                   help="seconds a client may pause while sending a request body before it gets 408")
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


def check_port(host: str, port: int) -> None:
    """Refuse, before the model loads, an address this process cannot listen on (a port in use,
    an address not on this machine): one line instead of a traceback after the load."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        # As uvicorn binds: SO_REUSEADDR, so a port left in TIME_WAIT by a server just stopped is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use (another server?); choose another with --port") \
                    from None
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def cmd_serve(args: argparse.Namespace) -> None:
    """Load the model, then serve it until SIGTERM / Ctrl-C: running requests get --shutdown-grace
    seconds to finish, then are cancelled cleanly."""
    try:
        import uvicorn  # noqa: F401 (the serve extra: checked before the model loads)

        import openjanus.serve.app  # noqa: F401
    except ModuleNotFoundError as e:
        raise UserError(f"openjanus serve needs the serve extra ({e.name} is missing): "
                        "pip install -e '.[serve]'") from None
    from openjanus.serve import logs

    check_port(args.host, args.port)  # before the model loads: a busy port costs nothing
    logs.configure(args.log_format)
    api_key = api_key_of(args)  # before the model loads: a mistake here costs nothing
    if args.replicas is not None or args.min_replicas is not None or args.max_replicas is not None:
        _serve_on_ray(args, api_key)
        return
    with open_pipeline(args) as pipe:
        _serve(pipe, args, api_key)


def api_key_of(args: argparse.Namespace) -> str | None:
    """--api-key, else $OPENJANUS_API_KEY, else None (no key). An empty or blank key is an
    error, never "no auth": `--api-key "$KEY"` with KEY unset must not open the server."""
    key, where = (args.api_key, "--api-key") if args.api_key is not None else \
        (os.environ.get("OPENJANUS_API_KEY"), "$OPENJANUS_API_KEY")
    if key is not None and not key.strip():
        raise UserError(f"{where} is empty: give a real API key, or leave it out to serve without one")
    return key


def allowed_hosts_of(args: argparse.Namespace) -> tuple[str, ...] | None:
    from openjanus.serve.guard import host_name

    if args.allowed_hosts is not None:
        names = tuple(host_name(h) for h in args.allowed_hosts.split(",") if h.strip())
        return None if "*" in names else names
    if args.host in ("0.0.0.0", "::", ""):
        return None  # bound to every address: the names clients use are not known here
    return tuple(dict.fromkeys((*default_of(ServeSettings, "allowed_hosts"), host_name(args.host))))


def _serve(pipe, args: argparse.Namespace, api_key: str | None) -> None:
    import uvicorn

    from openjanus.serve import logs
    from openjanus.serve.app import create_app, uvicorn_config

    settings = ServeSettings(model_id=args.model_id or pipe.name, api_key=api_key,
                             max_body_bytes=args.max_body_mb * 2**20, max_n=args.max_n,
                             allow_remote_images=args.allow_remote_images, allowed_hosts=allowed_hosts_of(args),
                             header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout)
    grace, stopping = args.shutdown_grace, []

    class Server(uvicorn.Server):
        # On SIGTERM/SIGINT uvicorn stops accepting connections and waits for the running requests.
        # Those still running after the grace period are cancelled in the engine, so each one ends
        # its own response (a 503, or a stream's error event) instead of uvicorn killing its task.
        def handle_exit(self, sig: int, frame) -> None:
            if app.state.guard is not None:
                app.state.guard.stop()  # bodies still arriving get 503 now: slow clients do not hold the exit
            if not stopping:
                timer = threading.Timer(grace, cancel_the_rest)
                timer.daemon = True
                timer.start()
                stopping.append(timer)
            super().handle_exit(sig, frame)

    app = create_app(pipe, settings)
    engine = pipe.engine
    logs.log.info(
        f"serving {settings.model_id} ({pipe.weights}, {pipe.fingerprint}) on {pipe.device}; "
        f"rows {engine.config.rows}, KV budget {engine.config.kv_cache_gib:g} GiB ({engine.max_cached_tokens:,} "
        f"tokens), queue {engine.config.queue}; http://{args.host}:{args.port}/ (API under /v1, key "
        f"{'required' if settings.api_key else 'not required'})",
        extra={"event": "start", "model": settings.model_id, "weights": pipe.weights, "fingerprint": pipe.fingerprint,
               "device": str(pipe.device), "rows": engine.config.rows, "kv_cache_gib": engine.config.kv_cache_gib,
               "kv_cache_tokens": engine.max_cached_tokens, "queue": engine.config.queue,
               "address": f"http://{args.host}:{args.port}/"})

    def cancel_the_rest() -> None:
        app.state.cancel_running()  # first the requests themselves, then the engine
        try:
            pipe.engine.close(cancel=True)
        except Exception as e:  # the requests are cancelled already; the app's shutdown closes it again
            print(f"warning: closing the engine failed: {type(e).__name__}: {e}", file=sys.stderr)

    # uvicorn's own log setup is skipped (log_config=None) and its access log off: ours writes one
    # line per request (openjanus.serve.logs), in the format asked for.
    server = Server(uvicorn_config(app, host=args.host, port=args.port, timeout_graceful_shutdown=grace + 10,
                                   log_level="info", log_config=None, access_log=False))
    # uvicorn re-raises the signal that stopped it once it is done; handling SIGTERM here makes the
    # end of a clean shutdown a normal exit (status 0) rather than death by signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for timer in stopping:
            timer.cancel()


def _serve_on_ray(args: argparse.Namespace, api_key: str | None) -> None:
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
    settings = ServeSettings(api_key=api_key, max_body_bytes=args.max_body_mb * 2**20, max_n=args.max_n,
                             allow_remote_images=args.allow_remote_images, allowed_hosts=allowed_hosts_of(args),
                             header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout)
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
