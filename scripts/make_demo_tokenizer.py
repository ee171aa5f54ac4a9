"""Train a byte-level BPE tokenizer (with the Janus special tokens) on the shapes world's text.

    python scripts/make_demo_tokenizer.py --out runs/demo/tokenizer-new

The text is the chat system prompt plus captions, descriptions and questions of the world, so
the prompts inference uses cost few tokens. The shipped demo model's tokenizer
(`configs/demo/tokenizer`, 527 ids) was made by this script before the world's yes/no questions
were balanced; run today it gives a slightly different vocabulary (524 ids), which would need the
text part and every stage retrained, so `scripts/train_demo.sh` copies the fixed one instead.
"""

from __future__ import annotations

import argparse


def main() -> None:
    from openjanus.processing import DEFAULT_SYSTEM_PROMPT, save_tokenizer_dir, train_tokenizer
    from openjanus.shapes.datasets import make_sample

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=1024)
    args = p.parse_args()
    texts = [DEFAULT_SYSTEM_PROMPT] * 50
    texts += [make_sample("text", 1, i).record["text"] for i in range(20000)]
    for i in range(5000):
        turns = make_sample("und", 2, i, 64).record["conversations"]
        texts += [m["content"].replace("<image_placeholder>\n", "") for m in turns]
    texts += [make_sample("t2i", 3, i, 64).record["caption"] for i in range(5000)]
    save_tokenizer_dir(train_tokenizer(texts, vocab_size=args.vocab_size), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
