"""Record greedy and seeded token ids of the inference path, as a regression baseline.

The committed file was recorded at commit aeb7478, before the batching engine, with that
commit's API (`generate_images`, and `generate_text` on a left-padded batch of the chat
questions); this script now records the same cases through the engine and gives the same file,
which `tests/test_regression_tokens.py` checks (fp32, CPU). The cases are plain data below so
the test and this script agree on them.

    python scripts/record_regression_tokens.py > tests/data/regression_tokens.json
"""

from __future__ import annotations

import json
import sys

import torch
from PIL import Image

# (model, prompts, n per prompt, temperature, seed): image requests.
IMAGE_CASES = [
    ("demo", ["a red circle", "two blue squares left of a green star"], 2, 0.0, 0),
    ("demo", ["a yellow triangle"], 3, 1.0, 7),
    ("tiny", ["a red fox in the snow", "a cat"], 1, 0.0, 0),
]
# (model, questions, colours of the solid images asked about, max new tokens): greedy chat.
CHAT_CASES = [
    ("demo", ["Is there a red circle?", "How many objects are there?", "What colour is the square?"],
     ["red", "blue", "green"], 12),
    ("tiny", ["What is in this picture?", "Describe it."], ["white", "black"], 8),
]


def load(name: str):
    from openjanus.inference.pipeline import JanusPipeline

    return JanusPipeline.load(None if name == "demo" else name, device="cpu", dtype="float32", seed=0)


def solid(colour: str, size: int) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def main() -> None:
    from openjanus.requests import ChatRequest, ImageRequest, SamplingParams

    torch.set_num_threads(2)
    pipes = {}
    out = {"image": [], "chat": []}
    for model, prompts, n, temperature, seed in IMAGE_CASES:
        pipe = pipes.setdefault(model, load(model))
        results = [pipe.generate(ImageRequest(p, n=n, seed=seed, sampling=SamplingParams(temperature)))
                   for p in prompts]
        out["image"].append([r.tokens.tolist() for r in results])
    for model, questions, colours, max_new in CHAT_CASES:
        pipe = pipes.setdefault(model, load(model))
        eos = pipe.processor.tokenizer.eos_id
        requests = [ChatRequest.ask(q, [solid(c, pipe.und_image_size)], max_new_tokens=max_new)
                    for q, c in zip(questions, colours)]
        # Token ids as sampled, EOS included when the answer ended with it.
        out["chat"].append([r.token_ids + ([eos] if r.finish_reason == "stop" else []) for r in pipe.run(requests)])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
