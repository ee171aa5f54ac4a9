"""Same request and seed, same image over HTTP when requests arrive together, in bf16 (issue 23):
concurrent requests with prompts of equal length (which used to share a prefill) return the
images each returns alone."""

from __future__ import annotations

import threading

import httpx

from openjanus.inference.engine import EngineConfig
from openjanus.inference.pipeline import JanusPipeline
from openjanus.serve.protocol import ServeSettings
from serve import Server


def test_bf16_images_are_the_same_alone_and_concurrent():
    pipe = JanusPipeline.load(None, device="cpu", dtype="bfloat16")
    pipe.start_engine(EngineConfig(rows=32))
    bodies = [{"prompt": p, "seed": s, "n": n} for p, s, n in
              (("a red circle", 1, 1), ("a blue square", 2, 2), ("a green star", 3, 1), ("a red circle", 4, 1))]
    with Server(pipe, ServeSettings(model_id="janus-shapes")) as s:
        def get(body):
            r = httpx.post(s.url + "/v1/images/generations", json=body, timeout=120)
            assert r.status_code == 200, r.text
            return [d["b64_json"] for d in r.json()["data"]]

        alone = [get(b) for b in bodies]
        for _ in range(2):
            together: list = [None] * len(bodies)
            barrier = threading.Barrier(len(bodies))

            def run(i, barrier=barrier, together=together):
                barrier.wait()
                together[i] = get(bodies[i])

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert together == alone
    pipe.engine.close()
