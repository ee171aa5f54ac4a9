"""Second-turn latency of a chat about an image, with and without the prefix cache.

    python bench/bench_prefix.py                    # the shipped demo model
    python bench/bench_prefix.py --model small      # a preset (random weights, stand-in tokenizer)

Each round asks a first question about a new image (so no earlier round can serve it), then a
second question that repeats the first turn and its answer; the second turn's latency (request
to result, --new-tokens answer tokens) is timed with the engine's prefix cache on and off, in
turn, on the same model in one process. Also printed: the prompt positions the cache served.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="folder or preset (default: the shipped demo model)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from openjanus.inference.engine import Engine, EngineConfig
    from openjanus.inference.pipeline import JanusPipeline
    from openjanus.requests import ChatRequest, Message

    pipe = JanusPipeline.load(args.model, device="cpu", dtype=args.dtype)
    size = pipe.und_image_size
    engines = {on: Engine(pipe.model, pipe.processor, EngineConfig(rows=4, prefix_cache=on)).start()
               for on in (False, True)}

    def conversation(engine: Engine, r: int) -> tuple[float, float, int, int]:
        image = Image.new("RGB", (size, size), ((37 * r) % 256, (91 * r) % 256, (53 * r + 100) % 256))
        first = [Message("user", [image, "Describe this picture."])]
        t = time.perf_counter()
        one = engine.submit(ChatRequest(first, max_new_tokens=args.new_tokens, stop_at_eos=False)).result()
        t1 = time.perf_counter() - t
        second = [*first, Message("assistant", one.text), Message("user", "What colour is the background?")]
        t = time.perf_counter()
        two = engine.submit(ChatRequest(second, max_new_tokens=args.new_tokens, stop_at_eos=False)).result()
        return t1, time.perf_counter() - t, two.prompt_tokens, two.cost.cached_tokens

    conversation(engines[False], 10_000)  # warm-up
    runs: dict[bool, list] = {False: [], True: []}
    for r in range(args.rounds):
        for on in (False, True):  # in turn: the machine is shared
            runs[on].append(conversation(engines[on], r))
    for engine in engines.values():
        engine.close()
    print(f"model {pipe.name} ({str(pipe.dtype).removeprefix('torch.')}), {torch.get_num_threads()} threads, "
          f"{args.new_tokens}-token answers, median of {args.rounds} conversations")
    print(f"{'prefix cache':<14}{'turn 1 s':>9}{'turn 2 s':>9}{'turn 2 prompt':>14}{'served':>8}")
    report = {"model": pipe.name, "rows": []}
    for on in (False, True):
        t1 = statistics.median(x[0] for x in runs[on])
        t2 = statistics.median(x[1] for x in runs[on])
        prompt, served = runs[on][-1][2], runs[on][-1][3]
        report["rows"].append({"prefix_cache": on, "turn1_s": t1, "turn2_s": t2, "turn2_prompt": prompt,
                               "served": served})
        print(f"{'on' if on else 'off':<14}{t1:>9.3f}{t2:>9.3f}{prompt:>14}{served:>8}")
    off, on = (statistics.median(x[1] for x in runs[k]) for k in (False, True))
    print(f"second turn: {off / on:.2f}x faster with the prefix cache")
    report["turn2_speedup"] = off / on
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
