"""Record greedy and seeded token ids of the inference path, as a regression baseline.

Run once on a known-good commit; `tests/test_regression_tokens.py` checks that the current
code still produces exactly these ids (fp32, CPU). The cases are plain data below so the
test and this script agree on them.

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
    from openjanus.pipeline import JanusPipeline

    return JanusPipeline.load(None if name == "demo" else name, device="cpu", dtype="float32", seed=0)


def solid(colour: str, size: int) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def main() -> None:
    torch.set_num_threads(2)
    pipes = {}
    out = {"image": [], "chat": []}
    for model, prompts, n, temperature, seed in IMAGE_CASES:
        pipe = pipes.setdefault(model, load(model))
        res = pipe.generate_images(prompts, n_per_prompt=n, seed=seed, temperature=temperature, progress=False)
        out["image"].append(res.tokens.tolist())
    for model, questions, colours, max_new in CHAT_CASES:
        pipe = pipes.setdefault(model, load(model))
        images = [solid(c, pipe.und_image_size) for c in colours]
        chats = [([{"role": "user", "content": q, "images": [im]}, {"role": "assistant", "content": ""}], [])
                 for q, im in zip(questions, images)]
        ids: list[list[int]] = [[] for _ in chats]
        tok = pipe.processor.tokenizer
        # Token ids, not text: capture them from the stream of the generation loop.
        from openjanus.generate import generate_text
        batch = pipe.processor.collate(pipe._encode_chats(chats, max_new))
        for step in generate_text(pipe.model, batch.input_ids, batch.attention_mask, tok.eos_id,
                                  image_mask=batch.image_mask, pixel_values=batch.pixel_values,
                                  max_new_tokens=max_new):
            for row, t in enumerate(step):
                if t is not None:
                    ids[row].append(t)
        out["chat"].append(ids)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
