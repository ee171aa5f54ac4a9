"""Inference speed: openjanus vs transformers' Janus on the same random weights, in one run.

    python bench/bench_inference.py --preset small                      # CPU-sized
    python bench/bench_inference.py --preset janus-pro-1b --device cuda --dtype bfloat16 --parallel 16

Text-to-image: images/s and ms per token step (CFG, `--parallel` images per prompt).
Understanding: prefill ms and decode tokens/s for one image + question, greedy.
Each figure is the median of `--repeats` timed runs after one warm-up run. Without
transformers installed only openjanus is measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from openjanus.engine import EngineConfig
from openjanus.pipeline import JanusPipeline, resolve_device, resolve_dtype
from openjanus.requests import ChatRequest, ImageRequest, Message

PROMPT = "a red circle above a blue square, watercolor"
QUESTION = "Describe this picture in detail."


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` runs of `fn`, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_openjanus(pipe: JanusPipeline, args: argparse.Namespace) -> dict[str, float]:
    dev = pipe.device
    n_tok = pipe.model.cfg.num_gen_tokens
    if args.compile:
        pipe.start_engine(EngineConfig(compile_step=True))
    t2i = timed(lambda: pipe.generate(ImageRequest(PROMPT, n=args.parallel, seed=0)), dev, args.repeats)
    image = Image.new("RGB", (pipe.und_image_size, pipe.und_image_size), (120, 30, 200))

    def prefill_only() -> None:
        pipe.generate(ChatRequest.ask(QUESTION, [image], max_new_tokens=1))

    def full_answer() -> None:  # exactly new_tokens tokens: EOS does not end it
        pipe.generate(ChatRequest.ask(QUESTION, [image], max_new_tokens=args.new_tokens, stop_at_eos=False))

    prefill = timed(prefill_only, dev, args.repeats)
    answer = timed(full_answer, dev, args.repeats)
    return {"images/s": args.parallel / t2i, "ms/token step": 1000 * t2i / n_tok,
            "prefill ms": 1000 * prefill, "decode tok/s": (args.new_tokens - 1) / max(answer - prefill, 1e-9)}


def bench_transformers(pipe: JanusPipeline, args: argparse.Namespace) -> dict[str, float] | None:
    try:
        from transformers import JanusForConditionalGeneration
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.set_verbosity_error()
    from openjanus.checkpoints import save_model

    dev, dtype = pipe.device, pipe.dtype
    cfg = pipe.model.cfg
    tok = pipe.processor.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        save_model(pipe.model, tmp, layout="hf")
        # The stand-in tokenizer's placeholder id, so transformers finds the image positions.
        cfg_path = Path(tmp) / "config.json"
        raw = json.loads(cfg_path.read_text())
        raw["image_token_id"] = tok.image_id
        cfg_path.write_text(json.dumps(raw))
        hf = JanusForConditionalGeneration.from_pretrained(tmp, torch_dtype=dtype).to(dev).eval()
    # Same token ids as our pipeline feeds: the processor's formatted prompt.
    prompt_ids = torch.tensor([tok.encode(pipe.processor.t2i_prompt(PROMPT))], device=dev)
    n_tok = cfg.num_gen_tokens

    from transformers import GenerationConfig

    # transformers' image mode reads BOI from generation_kwargs; the prompt ends with BOI as ours does.
    gen_cfg = GenerationConfig(guidance_scale=5.0, num_return_sequences=args.parallel, do_sample=True,
                               max_new_tokens=n_tok, min_new_tokens=n_tok, bos_token_id=tok.bos_id,
                               pad_token_id=tok.pad_id, generation_kwargs={"boi_token_id": tok.boi_id})

    def t2i() -> None:
        with torch.inference_mode():
            hf.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                        generation_mode="image", generation_config=gen_cfg)

    image = Image.new("RGB", (pipe.und_image_size, pipe.und_image_size), (120, 30, 200))
    sample = pipe.processor.encode_chat([Message("user", [image, QUESTION])])
    ids = torch.tensor([sample.input_ids], device=dev)
    pixels = sample.pixel_values.to(dev, dtype)

    def understand(n: int) -> None:
        with torch.inference_mode():
            hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                        max_new_tokens=n, min_new_tokens=n, do_sample=False, generation_mode="text",
                        pad_token_id=tok.eos_id, eos_token_id=None)

    t = timed(t2i, dev, args.repeats)
    prefill = timed(lambda: understand(1), dev, args.repeats)
    answer = timed(lambda: understand(args.new_tokens), dev, args.repeats)
    return {"images/s": args.parallel / t, "ms/token step": 1000 * t / n_tok,
            "prefill ms": 1000 * prefill, "decode tok/s": (args.new_tokens - 1) / max(answer - prefill, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--parallel", type=int, default=4, help="images per prompt (CFG doubles the rows)")
    ap.add_argument("--new-tokens", type=int, default=32, help="answer length for the decode figure")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile our decode step")
    ap.add_argument("--no-peer", action="store_true", help="skip transformers")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, dev)
    torch.set_grad_enabled(False)
    pipe = JanusPipeline.from_preset(args.preset, device=dev, dtype=dtype)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"preset {args.preset}, {str(dtype).removeprefix('torch.')}, {name}, torch {torch.__version__}, "
          f"{args.parallel} images per prompt, {args.new_tokens}-token answers, median of {args.repeats}")
    ours = bench_openjanus(pipe, args)
    peer = None if args.no_peer else bench_transformers(pipe, args)
    print(f"{'metric':<16}{'openjanus':>12}" + (f"{'transformers':>14}{'ratio':>8}" if peer else ""))
    for key, value in ours.items():
        line = f"{key:<16}{value:>12.2f}"
        if peer:
            # Ratio > 1 means openjanus is better (higher throughput or lower latency).
            ratio = peer[key] / value if key.endswith("ms") or key.startswith("ms") else value / peer[key]
            line += f"{peer[key]:>14.2f}{ratio:>7.2f}x"
        print(line)
    if peer is None and not args.no_peer:
        print("(transformers not installed: no peer figures)")


if __name__ == "__main__":
    main()
