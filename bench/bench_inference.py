"""Inference speed: openjanus vs transformers' Janus on the same random weights, in one run.

    python bench/bench_inference.py --preset small                      # CPU-sized, end to end
    python bench/bench_inference.py --preset janus-pro-1b --device cuda --dtype bfloat16 --parallel 16
    python bench/bench_inference.py --preset janus-pro-1b --steps 8 --parts --no-e2e --json out.json

End to end (default; `--no-e2e` skips it): text-to-image images/s and ms per token step (CFG,
`--parallel` images per prompt), understanding prefill ms and decode tokens/s, with the
pipeline in `--dtype` / `--quantize`.

`--steps N`: the model-level text-to-image decode step (LLM + image head + next-token
embedding, CFG argmax), timed over N steps after 2 warm-up steps, for 1 image (2 rows) and
`--parallel` images, in fp32, bf16 and int8 (bf16 activations) beside transformers fp32 on the
same weight tensors. Each figure is printed against its format's floor (LLM + image-head
weight bytes / this machine's read bandwidth, measured in the run), and the 1-image run
reports the guided logits' largest difference from fp32 and how many greedy tokens agree.

`--parts`: SigLIP forward, VQ decode and VQ encode of one image, ours (fp32, bf16) beside
transformers fp32 on the same weights.

Figures are medians over `--repeats` rounds that run every contender in turn (the machine is
shared: compare the ratios of one run, not absolute times across runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from openjanus.allocator import keep_freed_memory
from openjanus.inference.engine import EngineConfig
from openjanus.inference.pipeline import JanusPipeline, prepare_for_inference, resolve_device, resolve_dtype
from openjanus.inference.runner import round_up
from openjanus.inference.sampling import cfg_combine
from openjanus.model.llm import KVCache, cache_mask
from openjanus.requests import ChatRequest, ImageRequest, Message

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _twins import DECODE_PARTS, VISUAL_PARTS, bandwidth, build_parts, converted, hf_twin  # noqa: E402

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
        pipe.start_engine(EngineConfig(compile=True))
    request = ImageRequest(PROMPT, n=args.parallel, seed=0, jacobi=args.jacobi)
    t2i = timed(lambda: pipe.generate(request), dev, args.repeats)
    passes = pipe.generate(request).cost.forward_passes
    image = Image.new("RGB", (pipe.und_image_size, pipe.und_image_size), (120, 30, 200))

    def prefill_only() -> None:
        pipe.generate(ChatRequest.ask(QUESTION, [image], max_new_tokens=1))

    def full_answer() -> None:  # exactly new_tokens tokens: EOS does not end it
        pipe.generate(ChatRequest.ask(QUESTION, [image], max_new_tokens=args.new_tokens, stop_at_eos=False))

    prefill = timed(prefill_only, dev, args.repeats)
    answer = timed(full_answer, dev, args.repeats)
    return {"images/s": args.parallel / t2i, "ms/token step": 1000 * t2i / n_tok,
            "passes/image": passes / (args.parallel if args.jacobi else 1),
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


# --- the model-level decode step ------------------------------------------------------------

PROMPT_LEN = 32  # prefilled positions (random embeddings) before the timed steps
WARMUP = 2
CFG_WEIGHT = 5.0


def floor_bytes(model) -> int:
    """Bytes a decode step must read at least once: LLM blocks, final norm and image head."""
    return sum(t.numel() * t.element_size() for root in (model.llm.layers, model.llm.norm, model.gen_head)
               for t in list(root.parameters()) + list(root.buffers()))


def greedy_steps(head, feed, hidden: Tensor, steps: int, device: torch.device) -> tuple[list[float], Tensor, Tensor]:
    """WARMUP + `steps` greedy CFG steps from the prefilled `hidden` [rows, D]: `head(hidden)`
    gives the image logits, `feed(codes, i)` the next hidden state after feeding the image
    tokens of step i. -> (seconds per timed step, tokens of image 0, guided logits of image 0)."""
    times, tokens, logits_0 = [], [], []
    for i in range(WARMUP + steps):
        sync(device)
        t0 = time.perf_counter()
        guided = cfg_combine(head(hidden), CFG_WEIGHT)  # [images, codebook]
        codes = guided.argmax(-1)
        hidden = feed(codes.repeat_interleave(2), i)
        sync(device)
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
        tokens.append(codes[0])
        logits_0.append(guided[0].float())
    return times, torch.stack(tokens), torch.stack(logits_0)


@torch.inference_mode()
def ours_steps(model, images: int, steps: int, length_bucket: int = 128) -> tuple[list[float], Tensor, Tensor]:
    """Prefill PROMPT_LEN random embeddings, then `greedy_steps` through our model."""
    cfg = model.cfg.llm
    dtype = model.llm.layers[0].attn_norm.weight.dtype
    device = model.llm.layers[0].attn_norm.weight.device
    rows = 2 * images
    max_len = round_up(PROMPT_LEN + WARMUP + steps + 1, length_bucket)
    cache = KVCache.allocate(cfg.n_layers, rows, max_len, cfg.n_kv_heads, cfg.head_dim, device=device, dtype=dtype)
    valid = torch.ones(rows, max_len, dtype=torch.bool, device=device)
    h = torch.randn(rows, PROMPT_LEN, cfg.dim, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    slots = torch.arange(PROMPT_LEN, device=device)
    pos = slots.expand(rows, PROMPT_LEN)
    hidden = model.llm(h, pos, mask=cache_mask(slots, valid[:, :PROMPT_LEN]), cache=cache, slots=slots,
                       kv_len=PROMPT_LEN)[:, -1]

    def feed(codes: Tensor, i: int) -> Tensor:
        x = model.embed_image_tokens(codes)[:, None]  # [rows, 1, D]
        slot = torch.tensor([PROMPT_LEN + i], device=device)
        kv_len = round_up(PROMPT_LEN + i + 1, length_bucket)  # only the slots in use, bucketed
        return model.llm(x, slot.expand(rows, 1), mask=cache_mask(slot, valid[:, :kv_len]), cache=cache,
                         slots=slot, kv_len=kv_len)[:, -1]

    return greedy_steps(model.image_logits, feed, hidden, steps, device)


@torch.inference_mode()
def hf_steps(hf, images: int, steps: int) -> tuple[list[float], Tensor, Tensor]:
    """The same loop through transformers' modules (its language model with a DynamicCache)."""
    from transformers import DynamicCache

    lm = hf.model.language_model
    dim = hf.config.text_config.hidden_size
    rows = 2 * images
    dtype, device = lm.norm.weight.dtype, lm.norm.weight.device
    h = torch.randn(rows, PROMPT_LEN, dim, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    cache = DynamicCache()
    hidden = lm(inputs_embeds=h, past_key_values=cache, use_cache=True).last_hidden_state[:, -1]

    def feed(codes: Tensor, i: int) -> Tensor:
        x = hf.prepare_embeddings_for_image_generation(codes)[:, None]
        return lm(inputs_embeds=x, past_key_values=cache, use_cache=True).last_hidden_state[:, -1]

    return greedy_steps(hf.model.generation_head, feed, hidden, steps, device)


def agreement(tokens: Tensor, logits: Tensor, ref_tokens: Tensor, ref_logits: Tensor) -> dict[str, float]:
    """Greedy tokens equal to the reference's, the run of equal tokens from the start, and the
    largest guided-logit difference over the steps fed identical histories."""
    same = tokens == ref_tokens
    run = int(same.long().cumprod(0).sum())
    # Step i's logits depend on tokens < i: identical histories up to step `run` inclusive.
    diff = (logits[:run + 1] - ref_logits[:run + 1]).abs().max().item()
    return {"greedy_agree": int(same.sum()), "greedy_prefix": run, "max_logit_diff": diff}


def bench_steps(cfg, args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    base = build_parts(cfg, DECODE_PARTS)
    for name in DECODE_PARTS:  # the rest stays on meta
        base.get_submodule(name).to(device)
    # Each format as `JanusPipeline.load` prepares it (fused projections outside fp32).
    contenders = {"float32": base, "bfloat16": prepare_for_inference(converted(base, torch.bfloat16))}
    contenders["int8"] = prepare_for_inference(converted(base, torch.bfloat16), "int8")
    hf = None if args.no_peer else hf_twin(base)
    sizes = sorted({1, args.parallel})
    runs: dict[tuple[str, int], list[float]] = {}
    seqs: dict[str, tuple[Tensor, Tensor]] = {}
    bws = []
    for r in range(args.repeats):
        bws.append(bandwidth(device))
        for images in sizes:
            if hf is not None:
                t, tok, lg = hf_steps(hf, images, args.steps)
                runs.setdefault(("transformers float32", images), []).append(statistics.median(t))
                if images == 1:
                    seqs["transformers float32"] = (tok, lg)
            for name, model in contenders.items():
                t, tok, lg = ours_steps(model, images, args.steps)
                runs.setdefault((name, images), []).append(statistics.median(t))
                if images == 1:
                    seqs[name] = (tok, lg)
        print(f"  round {r + 1}/{args.repeats} done", file=sys.stderr)
    bw = max(bws)
    floors = {name: floor_bytes(m) / bw for name, m in contenders.items()}
    floors["transformers float32"] = floors["float32"]
    peer = {images: statistics.median(runs[("transformers float32", images)]) for images in sizes} if hf else None
    ref_tok, ref_lg = seqs["float32"]
    rows = []
    for (name, images), ts in runs.items():
        sec = statistics.median(ts)
        row = {"format": name, "images": images, "rows": 2 * images, "ms_per_step": 1000 * sec,
               "floor_ms": 1000 * floors[name], "x_floor": sec / floors[name],
               "per_image_vs_1": sec / statistics.median(runs[(name, 1)])}
        if peer:
            row["speedup_vs_transformers_fp32"] = peer[images] / sec
        if images == 1:
            row.update(agreement(*seqs[name], ref_tok, ref_lg))
        rows.append(row)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\ndecode step ({args.preset}, {where}, read bandwidth {bw / 1e9:.1f} GB/s, "
          f"{args.steps} steps x {args.repeats} rounds, tokens compared over {WARMUP + args.steps} steps)")
    print(f"{'format':<22}{'images':>7}{'ms/step':>9}{'floor ms':>9}{'x floor':>8}{'vs HF fp32':>11}"
          f"{'N/1 img':>8}{'max dlogit':>11}{'greedy agree':>13}")
    for r in sorted(rows, key=lambda r: (r["images"], r["format"])):
        vs = f"{r['speedup_vs_transformers_fp32']:.2f}x" if "speedup_vs_transformers_fp32" in r else "-"
        ag = f"{r['greedy_agree']}/{WARMUP + args.steps}" if "greedy_agree" in r else ""
        dl = f"{r['max_logit_diff']:.3g}" if "max_logit_diff" in r else ""
        print(f"{r['format']:<22}{r['images']:>7}{r['ms_per_step']:>9.1f}{r['floor_ms']:>9.1f}{r['x_floor']:>8.2f}"
              f"{vs:>11}{r['per_image_vs_1']:>8.2f}{dl:>11}{ag:>13}")
    return {"bandwidth_gb_s": bw / 1e9, "steps": args.steps, "rows": rows}


# --- the visual parts ------------------------------------------------------------------------

@torch.inference_mode()
def bench_parts(cfg, args: argparse.Namespace) -> dict:
    base = build_parts(cfg, VISUAL_PARTS)
    ours = {"float32": base, "bfloat16": converted(base, torch.bfloat16)}
    hf = None if args.no_peer else hf_twin(base)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g) * 2 - 1
    images = torch.rand(1, 3, cfg.vq.image_size, cfg.vq.image_size, generator=g) * 2 - 1
    codes = torch.randint(0, cfg.vq.codebook_size, (1, cfg.num_gen_tokens), generator=g)
    tasks = {
        "SigLIP forward": (lambda m, x: m.und_encoder(x),
                           lambda h, x: h.model.vision_model(x).last_hidden_state, pixels),
        "VQ decode": (lambda m, c: m.gen_tokenizer.decode_codes(c), lambda h, c: h.model.vqmodel.decode(c), codes),
        "VQ encode": (lambda m, x: m.gen_tokenizer.encode(x),
                      lambda h, x: h.model.vqmodel.encode(x).image_tokens, images),
    }
    runs: dict[tuple[str, str], list[float]] = {}
    outs: dict[tuple[str, str], Tensor] = {}

    def clock(key, fn, *args):
        t0 = time.perf_counter()
        outs[key] = fn(*args)
        runs.setdefault(key, []).append(time.perf_counter() - t0)

    for r in range(args.repeats + 1):  # the first round warms up
        for task, (ours_fn, hf_fn, x) in tasks.items():
            if hf is not None:
                clock((task, "transformers float32"), hf_fn, hf, x)
            for name, m in ours.items():
                xin = x.to(torch.bfloat16) if name == "bfloat16" and x.is_floating_point() else x
                clock((task, name), ours_fn, m, xin)
        if r == 0:
            runs.clear()
        print(f"  parts round {r}/{args.repeats} done", file=sys.stderr)
    rows = []
    print(f"\nvisual parts ({args.preset}, 1 image, median of {args.repeats})")
    print(f"{'part':<16}{'format':<22}{'s':>8}{'vs HF fp32':>11}{'max |diff| vs fp32':>20}")
    for task in tasks:
        peer = statistics.median(runs[(task, "transformers float32")]) if hf else None
        for name in ([("transformers float32")] if hf else []) + list(ours):
            sec = statistics.median(runs[(task, name)])
            out, ref = outs[(task, name)], outs[(task, "float32")]
            if out.is_floating_point():
                diff = (out.float() - ref.float()).abs().max().item()
            else:  # codes: the fraction that differ
                diff = (out.flatten() != ref.flatten()).float().mean().item()
            row = {"part": task, "format": name, "seconds": sec, "diff_vs_fp32": diff}
            if peer:
                row["speedup_vs_transformers_fp32"] = peer / sec
            rows.append(row)
            vs = f"{peer / sec:.2f}x" if peer else "-"
            print(f"{task:<16}{name:<22}{sec:>8.2f}{vs:>11}{diff:>20.3g}")
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--override", action="append", default=[], metavar="PART.FIELD=VALUE",
                    help="config override, e.g. llm.n_layers=2 (repeatable; ints or comma-separated tuples)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantize", default="none", choices=["none", "int8"], help="end-to-end pipeline weights")
    ap.add_argument("--jacobi", type=int, default=0,
                    help="speculative Jacobi window for our end-to-end images (0: off)")
    ap.add_argument("--parallel", type=int, default=4, help="images per prompt (CFG doubles the rows)")
    ap.add_argument("--new-tokens", type=int, default=32, help="answer length for the decode figure")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=0, help="time N model-level decode steps per format (0: skip)")
    ap.add_argument("--parts", action="store_true", help="time SigLIP and the VQ against transformers")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end pipeline figures")
    ap.add_argument("--compile", action="store_true", help="torch.compile our decode step (end to end)")
    ap.add_argument("--no-peer", action="store_true", help="skip transformers")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument("--no-keep-freed-memory", action="store_true",
                    help="leave glibc's allocator as it is (the openjanus commands, and by default this "
                         "script for every contender alike, keep freed memory: openjanus.allocator)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_keep_freed_memory:
        keep_freed_memory()

    from openjanus.config import JanusConfig

    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = tuple(int(v) for v in value.split(",")) if "," in value else int(value)
    cfg = JanusConfig.from_name(args.preset, **overrides)
    torch.set_grad_enabled(False)
    report: dict = {"preset": args.preset, "overrides": overrides, "threads": torch.get_num_threads(),
                    "torch": torch.__version__}
    if args.steps:
        report["decode_step"] = bench_steps(cfg, args)
    if args.parts:
        report["parts"] = bench_parts(cfg, args)
    if not args.no_e2e:
        report["end_to_end"] = bench_end_to_end(args, overrides)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def bench_end_to_end(args: argparse.Namespace, overrides: dict) -> dict:
    dev = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, dev)
    pipe = JanusPipeline.from_preset(args.preset, device=dev, dtype=dtype, **overrides)
    prepare_for_inference(pipe.model, args.quantize)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nend to end: preset {args.preset}, {str(dtype).removeprefix('torch.')}, quantize {args.quantize}, {name}, "
          f"torch {torch.__version__}, {args.parallel} images per prompt, {args.new_tokens}-token answers, "
          f"median of {args.repeats}")
    ours = bench_openjanus(pipe, args)
    # The floor of a token step: the LLM and image-head weights read once, at this device's bandwidth.
    ours["floor ms"] = 1000 * floor_bytes(pipe.model) / bandwidth(dev)
    ours["x floor"] = ours["ms/token step"] / ours["floor ms"]
    peer = None if args.no_peer else bench_transformers(pipe, args)
    print(f"{'metric':<16}{'openjanus':>12}" + (f"{'transformers':>14}{'ratio':>8}" if peer else ""))
    for key, value in ours.items():
        line = f"{key:<16}{value:>12.2f}"
        if peer and key in peer:
            # Ratio > 1 means openjanus is better (higher throughput or lower latency).
            ratio = peer[key] / value if key.endswith("ms") or key.startswith("ms") else value / peer[key]
            line += f"{peer[key]:>14.2f}{ratio:>7.2f}x"
        print(line)
    if peer is None and not args.no_peer:
        print("(transformers not installed: no peer figures)")
    return {"openjanus": ours, "transformers": peer}


if __name__ == "__main__":
    main()
