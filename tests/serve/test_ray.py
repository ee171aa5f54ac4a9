"""The Ray Serve app (openjanus.serve.ray_app) on a local Ray instance with two replicas of the
demo model: the same answers, errors, streams and page as the single-process server, requests
spread over both replicas (their headers and Ray's per-replica metrics say so), and a killed
replica fails only the requests it held.

Bounded for a 2-core machine: 2 CPUs for Ray, half a CPU and one torch thread per replica.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from processes import free_port

openai = pytest.importorskip("openai")
ray = pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e '.[cluster]')")
pytest.importorskip("ray.serve")

from openjanus.serve.protocol import ServeSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ServeSettings(model_id="janus-shapes", max_body_bytes=2 * 2**20, max_image_pixels=1_000_000)


class RayApp:
    def __init__(self, url: str, metrics_url: str) -> None:
        self.url, self.metrics_url = url, metrics_url


@pytest.fixture(scope="module")
def ray_app():
    from ray import serve

    from openjanus.inference.engine import EngineConfig
    from openjanus.options import ModelOptions
    from openjanus.serve.ray_app import APP_NAME, ReplicaSpec, ScaleSpec, build_app, proxy_env

    metrics_port, http_port = free_port(), free_port()
    # As `openjanus serve --replicas` starts Ray: Serve's proxy gets openjanus.serve.ray_proxy.
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **proxy_env()}
    ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=metrics_port, log_to_driver=False,
             logging_level="warning", runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        spec = ReplicaSpec(model=ModelOptions(device="cpu", dtype="float32"), engine=EngineConfig(rows=32, queue=64),
                           threads=1, model_id="janus-shapes", settings=SETTINGS)
        serve.run(build_app(spec, ScaleSpec(replicas=2, num_cpus=0.5, max_ongoing_requests=16)), name=APP_NAME,
                  route_prefix="/")
        yield RayApp(f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        serve.shutdown()
        ray.shutdown()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_replica_flags_are_checked_before_ray_starts(capsys):
    from openjanus.cli import main

    assert main(["serve", "--min-replicas", "3", "--max-replicas", "2"]) == 2
    assert "autoscaling bounds must satisfy 0 <= min <= max" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--replicas", "2", "--replica-gpus", "-1"])
    assert exit_.value.code == 2 and "--replica-gpus" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_app_builder_reads_serve_run_arguments():
    from openjanus.errors import UserError
    from openjanus.serve.ray_app import app_builder

    app = app_builder({"model": "janus-shapes", "replicas": "3", "num_cpus": "0.5", "max_n": "4"})
    deployment = app._bound_deployment
    assert deployment.num_replicas == 3 and deployment.ray_actor_options["num_cpus"] == 0.5
    spec = deployment.init_args[0]
    assert spec.model.model == "janus-shapes" and spec.settings.max_n == 4
    scaled = app_builder({"min_replicas": "1", "max_replicas": "4"})._bound_deployment
    assert scaled._deployment_config.autoscaling_config.max_replicas == 4
    with pytest.raises(UserError, match="unknown argument"):
        app_builder({"replica": "2"})
    with pytest.raises(UserError, match="bad argument value for replicas: expected an integer, got 'two'"):
        app_builder({"replicas": "two"})
    # bounds as openjanus.numbers words them, checked before Ray deploys anything
    for args, message in [({"replicas": "0"}, "replicas must be >= 1, got 0"),
                          ({"min_replicas": "-1"}, "min_replicas must be >= 0, got -1"),
                          ({"num_gpus": "-1"}, "num_gpus must be >= 0, got -1"),
                          ({"num_cpus": "inf"}, "num_cpus: must be a finite number, got 'inf'"),
                          ({"min_replicas": "1", "target_ongoing_requests": "0"},
                           "target_ongoing_requests must be > 0"),
                          ({"threads": "0"}, "threads must be >= 1, got 0")]:
        with pytest.raises(UserError, match=re.escape(message)):
            app_builder(args)


def test_same_answers_errors_streams_and_page_as_the_single_process_server(ray_app, server):
    ours, plain = client(ray_app.url), client(server.url)
    for seed in (3, 11):
        a = ours.images.generate(model="janus-shapes", prompt="a red circle", n=2, extra_body={"seed": seed})
        b = plain.images.generate(model="janus-shapes", prompt="a red circle", n=2, extra_body={"seed": seed})
        assert [d.b64_json for d in a.data] == [d.b64_json for d in b.data]  # the same PNG bytes
    messages = [{"role": "user", "content": "How many shapes are there?"}]
    streams = [list(c.chat.completions.create(model="janus-shapes", messages=messages, max_tokens=8, temperature=0,
                                               stream=True)) for c in (ours, plain)]
    texts = ["".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) for s in streams]
    assert texts[0] == texts[1] and texts[0]
    for method, path, body in [("POST", "/v1/images/generations", {"prompt": "x", "n": 0}),
                               ("POST", "/v1/images/generations", b"{not json"),
                               ("POST", "/v1/chat/completions", {"messages": []}),
                               ("GET", "/v1/models/other", None), ("GET", "/nowhere", None)]:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
        r1 = httpx.request(method, ray_app.url + path, **kwargs)
        r2 = httpx.request(method, server.url + path, **kwargs)
        assert (r1.status_code, r1.json()) == (r2.status_code, r2.json()) and r1.status_code >= 400
    page = httpx.get(ray_app.url + "/")
    assert page.status_code == 200 and page.content == httpx.get(server.url + "/").content


def _replica_counts(metrics_url: str) -> dict[str, float]:
    """Ray's per-replica request counts of the openjanus deployment (from Ray's metrics endpoint)."""
    text = httpx.get(metrics_url, timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ray_serve_deployment_request_counter") and 'deployment="openjanus"' in line:
            replica = re.search(r'replica="([^"]+)"', line)[1]
            counts[replica] = counts.get(replica, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_concurrent_openai_requests_are_served_by_both_replicas(ray_app):
    c = client(ray_app.url)
    served: list[str] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            raw = c.images.with_raw_response.generate(model="janus-shapes", prompt=f"a blue square {i}",
                                                      extra_body={"seed": i})
            assert len(raw.parse().data) == 1
            served.append(raw.headers["x-openjanus-replica"])
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors and len(served) == 8
    assert len(set(served)) == 2, served
    deadline = time.time() + 60  # Ray's metrics agent reports every few seconds
    while True:
        counts = _replica_counts(ray_app.metrics_url)
        if set(counts) >= set(served) and all(counts[r] >= served.count(r) for r in set(served)):
            break
        assert time.time() < deadline, f"Ray's metrics never showed both replicas: {counts}"
        time.sleep(1)
    assert all(any(r.endswith(s) for r in counts) for s in set(served))


def test_a_killed_replica_fails_only_its_requests(ray_app):
    from ray import serve

    from openjanus.serve.ray_app import APP_NAME

    http = httpx.Client(base_url=ray_app.url, timeout=120)
    streams = []
    for i in range(4):  # eight images each: long enough to be in flight when the kill comes
        cm = http.stream("POST", "/v1/images/generations",
                         json={"prompt": f"a green star {i}", "n": 8, "seed": i, "stream": True})
        response = cm.__enter__()
        assert response.status_code == 200
        streams.append((cm, response, response.headers["x-openjanus-replica"]))
    replicas = {r for _, _, r in streams}
    assert len(replicas) == 2, "the four streams all went to one replica"
    victim = streams[0][2]
    plain: dict[int, tuple] = {}  # non-streaming requests in flight too

    def post(i: int) -> None:
        r = http.post("/v1/images/generations", json={"prompt": f"a red star {i}", "n": 8, "seed": i})
        if r.status_code == 200:
            plain[i] = (200, r.headers.get("x-openjanus-replica"))
        else:  # what Serve's proxy answers (openjanus.serve.ray_proxy) when the replica died holding it
            plain[i] = (r.status_code, r.headers.get("x-openjanus-replica"), r.headers.get("content-type"),
                        r.headers.get("retry-after"), r.json()["error"]["type"], r.json()["error"]["code"])

    posts = [threading.Thread(target=post, args=(i,)) for i in range(4)]
    for t in posts:
        t.start()
    time.sleep(0.5)
    ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#{APP_NAME}#{victim}", namespace="serve"), no_restart=True)

    outcome = {}
    for k, (cm, response, replica) in enumerate(streams):
        events = []
        try:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:])["type"])
            ended = "stream ended"
        except httpx.HTTPError as e:
            ended = type(e).__name__
        finally:
            cm.__exit__(None, None, None)
        outcome[k] = (replica, events.count("image_generation.completed"), ended)
    for replica, completed, ended in outcome.values():
        if replica == victim:  # cut off: the client sees a broken stream at once, never a silent end
            assert completed == 0 and ended != "stream ended", outcome
        else:
            assert completed == 8 and ended == "stream ended", outcome

    for t in posts:
        t.join(timeout=120)
    # Served by the survivor, or answered by Serve's proxy because the victim held them: OpenAI's
    # 503 with Retry-After (before openjanus.serve.ray_proxy: a plain-text 500).
    lost = (503, None, "application/json", "1", "server_error", "replica_unavailable")
    assert len(plain) == 4 and all(v in ((200, survivor), lost) for v in plain.values()
                                   for survivor in replicas - {victim}), plain

    # Requests after the kill are served (by the survivor while Ray starts a replacement).
    c = client(ray_app.url)
    for i in range(3):
        res = c.images.generate(model="janus-shapes", prompt="a red circle", extra_body={"seed": 100 + i})
        assert base64.b64decode(res.data[0].b64_json)[:8] == b"\x89PNG\r\n\x1a\n"
    # Ray replaces the dead replica: the application is healthy again with two replicas.
    deadline = time.time() + 120
    while serve.status().applications[APP_NAME].status != "RUNNING":
        assert time.time() < deadline, serve.status().applications[APP_NAME]
        time.sleep(1)

