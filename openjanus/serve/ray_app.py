"""Replicated serving on Ray Serve: the app of `openjanus serve`, one engine per replica.

    openjanus serve --replicas 2                                     # a local Ray instance
    openjanus serve --ray-address auto --min-replicas 1 --max-replicas 8 --host 0.0.0.0
    serve run openjanus.serve.ray_app:app_builder model=DIR replicas=4  # Ray's CLI / config files

Each replica is a Ray actor that loads its own `JanusPipeline` (on its own GPU when
`num_gpus` is 1: Ray sets CUDA_VISIBLE_DEVICES per actor) and serves the FastAPI app that
`create_app` makes for it, so endpoints, errors, streaming, the web page and the limits are
those of the single-process server. Ray Serve's HTTP proxy routes each request to a replica
(the less busy of two picked at random), restarts a replica that dies and, with
autoscaling bounds, adds and removes replicas on the number of requests in flight. Every
response names the replica that served it in the `x-openjanus-replica` header; a request
whose replica dies before answering gets OpenAI's 503 with Retry-After from Serve's proxy
(`openjanus.serve.ray_proxy`; `run` sets it up, `serve run` needs
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=openjanus.serve.ray_proxy:middlewares); Ray's metrics
endpoint counts requests per replica (`ray_serve_deployment_request_counter_total`), while the
app's own /metrics is that of the replica that answers.

This is the only module that imports Ray (the `cluster` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

try:
    import ray
    from ray import serve
except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
    from openjanus.errors import UserError

    raise UserError(f"replicated serving needs the cluster extra ({e.name} is missing): "
                    "pip install 'openjanus[cluster]'") from None

from openjanus.inference.engine import EngineConfig
from openjanus.options import ModelOptions
from openjanus.serve.protocol import ServeSettings

__all__ = ["ReplicaSpec", "ScaleSpec", "JanusReplica", "build_app", "app_builder", "proxy_env", "run"]

APP_NAME = "openjanus"
REPLICA_HEADER = "x-openjanus-replica"


@dataclass(frozen=True)
class ReplicaSpec:
    """What each replica loads (the model options of every command) and how its engine and app
    are set up."""

    model: ModelOptions = field(default_factory=ModelOptions)
    engine: EngineConfig = field(default_factory=EngineConfig)
    threads: int | None = None  # CPU threads of a replica's torch (None: torch's default)
    model_id: str | None = None  # the name clients see (None: the model folder's name)
    settings: ServeSettings = field(default_factory=ServeSettings)  # its model_id gives way to the one above

    def __post_init__(self) -> None:
        if self.threads is not None:
            from openjanus.numbers import check_integer

            check_integer(self.threads, low=1, name="threads")


@dataclass(frozen=True)
class ScaleSpec:
    """How many replicas, and what each reserves from Ray.

    replicas: a fixed count; or min_replicas/max_replicas: autoscaling between them on
    `target_ongoing_requests` per replica. `max_ongoing_requests` bounds what Ray sends one
    replica at once (its engine batches those). `num_cpus`/`num_gpus` are reserved per replica.
    """

    replicas: int | None = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 64
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    graceful_shutdown_s: float = 30.0

    def deployment_options(self) -> dict[str, Any]:
        from openjanus.errors import UserError
        from openjanus.numbers import check_integer, check_number

        options: dict[str, Any] = {
            "max_ongoing_requests": check_integer(self.max_ongoing_requests, low=1, name="max_ongoing_requests"),
            "graceful_shutdown_timeout_s": check_number(self.graceful_shutdown_s, low=0, name="graceful_shutdown_s"),
            "ray_actor_options": {"num_cpus": check_number(self.num_cpus, low=0, name="num_cpus"),
                                  "num_gpus": check_number(self.num_gpus, low=0, name="num_gpus")},
        }
        if self.min_replicas is None and self.max_replicas is None:
            options["num_replicas"] = check_integer(self.replicas, low=1, name="replicas")
            return options
        low = check_integer(self.min_replicas if self.min_replicas is not None else 1, low=0, name="min_replicas")
        if self.replicas is not None:
            check_integer(self.replicas, low=1, name="replicas")
        high = check_integer(self.max_replicas if self.max_replicas is not None else max(low, self.replicas or 1),
                             low=1, name="max_replicas")
        if low > high:
            raise UserError(f"autoscaling bounds must satisfy 0 <= min <= max and max >= 1, got min {low}, max {high}")
        initial = min(max(self.replicas or low, low), high)
        options["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": high, "initial_replicas": initial,
            "target_ongoing_requests": check_number(self.target_ongoing_requests, low=0, low_open=True,
                                                    name="target_ongoing_requests")}
        return options


@serve.deployment(name=APP_NAME)
@serve.ingress()
class JanusReplica:
    """One replica: a pipeline, its engine, and the FastAPI app over them."""

    def __init__(self, spec: ReplicaSpec) -> None:
        import torch

        from openjanus.allocator import keep_freed_memory

        if spec.threads:
            torch.set_num_threads(spec.threads)
        keep_freed_memory()
        self.spec = spec
        self.pipe = spec.model.load()
        try:
            self.pipe.start_engine(spec.engine)
        except BaseException:
            self.pipe.close()
            raise
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        from openjanus.serve.app import create_app

        settings = dataclasses.replace(self.spec.settings, model_id=self.spec.model_id or self.pipe.name)
        app = create_app(self.pipe, settings)
        replica = self.replica

        @app.middleware("http")
        async def name_the_replica(request, call_next):
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = replica
            return response

        return app


def proxy_env() -> dict[str, str]:
    """The environment that gives Serve's HTTP proxy `openjanus.serve.ray_proxy`'s middleware
    (a request whose replica died gets OpenAI's 503, not plain text): for the job that starts
    Serve (its controller and proxies inherit it). A value already set is kept."""
    from openjanus.serve.ray_proxy import IMPORT_PATH, PROXY_CALLBACK_ENV

    return {PROXY_CALLBACK_ENV: os.environ.get(PROXY_CALLBACK_ENV, IMPORT_PATH)}


def build_app(spec: ReplicaSpec, scale: ScaleSpec) -> serve.Application:
    """The Ray Serve application: `JanusReplica` deployed as `scale` says."""
    return JanusReplica.options(**scale.deployment_options()).bind(spec)


def app_builder(args: dict[str, str]) -> serve.Application:
    """For `serve run openjanus.serve.ray_app:app_builder key=value ...` and Serve config files.

    Keys: model, device, dtype, quantize, roles, rows, queue, kv_cache_gib, threads, model_id,
    api_key, max_n, replicas, min_replicas, max_replicas, target_ongoing_requests,
    max_ongoing_requests, num_cpus, num_gpus.
    """
    from openjanus.errors import UserError
    from openjanus.options import integer_flag, number_flag

    # Each value is text: read as its kind by the flag types (a finite number, an integer); the
    # bounds are checked where the value is used (ScaleSpec, EngineConfig, ...), as for the flags.
    integer, number = integer_flag(), number_flag()
    kinds = {"model": str, "device": str, "dtype": str, "quantize": str, "roles": str, "rows": integer,
             "queue": integer, "kv_cache_gib": number, "threads": integer, "model_id": str, "api_key": str,
             "max_n": integer, "replicas": integer, "min_replicas": integer, "max_replicas": integer,
             "target_ongoing_requests": number, "max_ongoing_requests": integer, "num_cpus": number,
             "num_gpus": number}
    unknown = sorted(set(args) - set(kinds))
    if unknown:
        raise UserError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(kinds)}")
    values = {}
    for k, v in args.items():
        try:
            values[k] = kinds[k](v)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"bad argument value for {k}: {e}") from None
    if "api_key" in values and not values["api_key"].strip():
        raise UserError("api_key is empty: give a real API key, or leave it out to serve without one")

    def take(names) -> dict[str, Any]:
        return {k: values.pop(k) for k in list(values) if k in names}

    model = ModelOptions(**take(ModelOptions.__dataclass_fields__))
    engine = EngineConfig(**take(("rows", "queue", "kv_cache_gib")))
    settings = ServeSettings(**take(("api_key", "max_n")))
    scale = ScaleSpec(**take(ScaleSpec.__dataclass_fields__))
    return build_app(ReplicaSpec(model=model, engine=engine, settings=settings, **values), scale)


def run(spec: ReplicaSpec, scale: ScaleSpec, host: str = "127.0.0.1", port: int = 8000,
        address: str | None = None, log=None) -> None:
    """Start (or join, with `address`) a Ray cluster, deploy the app behind Serve's HTTP proxy on
    host:port, and serve until SIGTERM / Ctrl-C; then remove the app (running requests get
    `graceful_shutdown_s`) and leave Ray."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    ray.init(address=address, include_dashboard=False, logging_level="warning",
             log_to_driver=False, runtime_env={"env_vars": proxy_env()})
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(spec, scale), name=APP_NAME, route_prefix="/")
        what = (f"{scale.replicas} replica(s)" if scale.min_replicas is None and scale.max_replicas is None
                else f"{scale.min_replicas}-{scale.max_replicas} replicas (autoscaling)")
        log(f"serving {spec.model.model or 'janus-shapes'} on http://{host}:{port} with {what} on Ray "
            f"({ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs)")
        stop.wait()
        log("stopping: running requests get the grace period, then the replicas end")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            serve.delete(APP_NAME)
        finally:
            if address is None:
                serve.shutdown()
            ray.shutdown()
