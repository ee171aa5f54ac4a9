"""Inference speed: openjanus vs transformers' Janus on the same random weights, each contender
in its own process.

    python bench/bench_inference.py --preset small                      # CPU-sized, end to end
    python bench/bench_inference.py --preset janus-pro-1b --device cuda --dtype bfloat16 --images 1 8
    python bench/bench_inference.py --preset janus-pro-1b --steps 8 --parts --no-e2e --json out.json

Like with like: every contender runs in a process of its own that builds only its own weights
(the same seeded random weights), so a janus-pro-1b comparison never holds two models at once;
transformers runs in the same dtype beside each of our formats (bf16 beside bf16, fp32 beside
fp32; our int8, which computes in bf16, beside transformers bf16). Each timed run watches the
kernel's page-reclaim counters and the process's major faults (bench/_reclaim.py): a run
during which the machine reclaimed memory is flagged and no ratio is printed from it.

End to end (default; `--no-e2e` skips it): a whole text-to-image request of each of `--images`
image counts (CFG, one prompt; seconds per request and images/s), and understanding prefill ms
and decode tokens/s, with our pipeline in `--dtype` / `--quantize` (`--jacobi N|auto` for our
images) and transformers in `--dtype`.

`--steps N`: the model-level text-to-image decode step (LLM + image head + next-token
embedding, CFG argmax), timed over N steps after 2 warm-up steps, for 1 image (2 rows) and
`--parallel` images, for ours in fp32, bf16 and int8 (bf16 activations) and transformers in fp32
and bf16. Each figure is printed against its format's floor (LLM + image-head weight bytes /
this machine's read bandwidth, measured in the parent process), and the 1-image runs report the
guided logits' largest difference from our fp32 and how many greedy tokens agree.

`--parts`: SigLIP forward, VQ decode and VQ encode of one image, ours (fp32, bf16) beside
transformers fp32 on the same weights (small models: one process).

Figures are medians over `--repeats` runs inside each process; `--rounds R` runs every
contender's process R times in turn (the machine is shared: compare the ratios of one run, not
absolute times across runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
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
from _reclaim import ReclaimWatch  # noqa: E402
from _twins import DECODE_PARTS, VISUAL_PARTS, bandwidth, build_parts, converted, hf_twin  # noqa: E402

PROMPT = "a red circle above a blue square, watercolor"
QUESTION = "Describe this picture in detail."


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


RECLAIMED: dict[str, str] = {}  # figure -> what the machine reclaimed while it was timed (this process)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, label: str = "") -> float:
    """Median seconds of `repeats` runs of `fn`, after one warm-up run; a reclaim during the
    timed runs is recorded under `label`."""
    fn()
    times = []
    with ReclaimWatch() as watch:
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    if watch.reclaimed:
        RECLAIMED[label] = watch.describe()
    return statistics.median(times)


def bench_openjanus(pipe: JanusPipeline, args: argparse.Namespace) -> dict[str, float]:
    dev = pipe.device
    if args.compile:
        pipe.start_engine(EngineConfig(compile=True))
    jacobi = args.jacobi if args.jacobi == "auto" else int(args.jacobi)
    out: dict[str, float] = {}
    for n in args.images:
        request = ImageRequest(PROMPT, n=n, seed=0, jacobi=jacobi)
        secs = timed(lambda r=request: pipe.generate(r), dev, args.repeats, f"{n} images")
        out[f"s/request ({n} img)"] = secs
        out[f"images/s ({n} img)"] = n / secs
        out[f"passes ({n} img)"] = pipe.generate(request).cost.forward_passes
    image = Image.new("RGB", (pipe.und_image_size, pipe.und_image_size), (120, 30, 200))

    def prefill_only() -> None:
        pipe.generate(ChatRequest.ask(QUESTION, [image], max_new_tokens=1))

    def full_answer() -> None:  # exactly new_tokens tokens: EOS does not end it
        pipe.generate(ChatRequest.ask(QUESTION, [image], max_new_tokens=args.new_tokens, stop_at_eos=False))

    # A fresh question each time: the prefix cache would otherwise serve the repeated prompt.
    pipe.start_engine(EngineConfig(compile=args.compile, prefix_cache=False))
    prefill = timed(prefill_only, dev, args.repeats, "prefill")
    answer = timed(full_answer, dev, args.repeats, "answer")
    out["prefill ms"] = 1000 * prefill
    out["decode tok/s"] = (args.new_tokens - 1) / max(answer - prefill, 1e-9)
    return out


def bench_transformers(model_dir: str, pipe_processor, dtype: torch.dtype, dev: torch.device,
                       und_size: int, args: argparse.Namespace) -> dict[str, float] | None:
    """transformers' Janus loaded from `model_dir` (our weights saved in its layout)."""
    try:
        from transformers import GenerationConfig, JanusForConditionalGeneration
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.set_verbosity_error()
    hf = JanusForConditionalGeneration.from_pretrained(model_dir, torch_dtype=dtype).to(dev).eval()
    tok = pipe_processor.tokenizer
    # Same token ids as our pipeline feeds: the processor's formatted prompt.
    prompt_ids = torch.tensor([tok.encode(pipe_processor.t2i_prompt(PROMPT))], device=dev)
    n_tok = args.num_gen_tokens
    out: dict[str, float] = {}
    for n in args.images:
        # transformers' image mode reads BOI from generation_kwargs; the prompt ends with BOI as ours does.
        gen_cfg = GenerationConfig(guidance_scale=5.0, num_return_sequences=n, do_sample=True,
                                   max_new_tokens=n_tok, min_new_tokens=n_tok, bos_token_id=tok.bos_id,
                                   pad_token_id=tok.pad_id, generation_kwargs={"boi_token_id": tok.boi_id})

        def t2i(gen_cfg=gen_cfg) -> None:
            with torch.inference_mode():
                hf.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                            generation_mode="image", generation_config=gen_cfg)

        secs = timed(t2i, dev, args.repeats, f"{n} images")
        out[f"s/request ({n} img)"] = secs
        out[f"images/s ({n} img)"] = n / secs

    image = Image.new("RGB", (und_size, und_size), (120, 30, 200))
    sample = pipe_processor.encode_chat([Message("user", [image, QUESTION])])
    ids = torch.tensor([sample.input_ids], device=dev)
    pixels = sample.pixel_values.to(dev, dtype)

    def understand(n: int) -> None:
        with torch.inference_mode():
            hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                        max_new_tokens=n, min_new_tokens=n, do_sample=False, generation_mode="text",
                        pad_token_id=tok.eos_id, eos_token_id=None)

    prefill = timed(lambda: understand(1), dev, args.repeats, "prefill")
    answer = timed(lambda: understand(args.new_tokens), dev, args.repeats, "answer")
    out["prefill ms"] = 1000 * prefill
    out["decode tok/s"] = (args.new_tokens - 1) / max(answer - prefill, 1e-9)
    return out


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


STEP_CONTENDERS = ("float32", "bfloat16", "int8", "transformers float32", "transformers bfloat16")
# Whom each of our formats is compared with: transformers in the dtype it computes in.
PEER = {"float32": "transformers float32", "bfloat16": "transformers bfloat16", "int8": "transformers bfloat16"}


def step_contender(cfg, name: str, device: torch.device):
    """(model, floor bytes) of one contender: its own seeded random weights, nothing else."""
    base = build_parts(cfg, DECODE_PARTS)
    for part in DECODE_PARTS:  # the rest stays on meta
        base.get_submodule(part).to(device)
    fmt = name.removeprefix("transformers ")
    if fmt != "float32":
        base = prepare_for_inference(converted(base, torch.bfloat16), "int8" if fmt == "int8" else "none")
        gc.collect()
    floor = floor_bytes(base)
    # transformers' twin holds the very tensors of ours in the same dtype (its own layout).
    return (hf_twin(base) if name.startswith("transformers") else base), floor


def steps_child(cfg, name: str, args: argparse.Namespace) -> dict:
    """One contender's decode steps, in this process (see `--steps`)."""
    device = resolve_device(args.device)
    model, floor = step_contender(cfg, name, device)
    run = hf_steps if name.startswith("transformers") else ours_steps
    out: dict = {"name": name, "floor_bytes": floor, "seconds": {}, "reclaimed": {}}
    for images in sorted({1, args.parallel}):
        times = []
        with ReclaimWatch() as watch:
            for _ in range(args.repeats):
                t, tok, lg = run(model, images, args.steps)
                times.append(statistics.median(t))
                if images == 1:
                    out["tokens"], out["logits"] = tok.cpu(), lg.cpu()
        out["seconds"][images] = statistics.median(times)
        if watch.reclaimed:
            out["reclaimed"][images] = watch.describe()
    return out


def in_child(args: argparse.Namespace, child: str) -> dict | None:
    """Run this script for one contender (`--child`) in a fresh process; its results, or None
    when it failed (its error is printed)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.pt"
        argv = sys.argv[1:]
        if "--json" in argv:  # the parent alone writes the report
            i = argv.index("--json")
            argv = argv[:i] + argv[i + 2:]
        proc = subprocess.run([sys.executable, __file__, *argv, "--child", child, "--child-out", str(out)],
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0 or not out.exists():
            print(f"  {child}: failed (exit {proc.returncode})", file=sys.stderr)
            return None
        return torch.load(out, weights_only=True)


def bench_steps(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    bw = bandwidth(device)  # before any model exists
    names = [n for n in STEP_CONTENDERS if not (args.no_peer and n.startswith("transformers"))]
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for name in names:
            res = in_child(args, f"steps:{name}")
            if res is not None:
                runs.setdefault(name, []).append(res)
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    sizes = sorted({1, args.parallel})
    sec = {(n, i): statistics.median(res["seconds"][i] for res in rs) for n, rs in runs.items() for i in sizes}
    reclaimed = {(n, i): "; ".join(res["reclaimed"][i] for res in rs if i in res["reclaimed"])
                 for n, rs in runs.items() for i in sizes}
    ref = runs.get("float32", [None])[0]
    rows = []
    for name, rs in runs.items():
        floor = rs[0]["floor_bytes"] / bw
        for images in sizes:
            s = sec[(name, images)]
            row = {"format": name, "images": images, "rows": 2 * images, "ms_per_step": 1000 * s,
                   "floor_ms": 1000 * floor, "x_floor": s / floor, "reclaimed": reclaimed[(name, images)]}
            peer = PEER.get(name)
            if peer in runs and not row["reclaimed"] and not reclaimed[(peer, images)]:
                row["speedup_vs_" + peer.replace(" ", "_")] = sec[(peer, images)] / s
            if images == 1 and ref is not None:
                row.update(agreement(rs[0]["tokens"], rs[0]["logits"], ref["tokens"], ref["logits"]))
            rows.append(row)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\ndecode step ({args.preset}, {where}, read bandwidth {bw / 1e9:.1f} GB/s, {args.steps} steps x "
          f"{args.repeats} runs x {args.rounds} rounds, each contender in its own process; tokens compared over "
          f"{WARMUP + args.steps} steps)")
    print(f"{'format':<24}{'images':>7}{'ms/step':>9}{'floor ms':>9}{'x floor':>8}{'vs HF same dtype':>17}"
          f"{'max dlogit':>11}{'greedy agree':>13}")
    for r in sorted(rows, key=lambda r: (r["images"], r["format"])):
        peer = PEER.get(r["format"])
        key = "speedup_vs_" + peer.replace(" ", "_") if peer else None
        vs = f"{r[key]:.2f}x" if key in r else ("reclaim: no ratio" if peer and (
            r["reclaimed"] or reclaimed.get((peer, r["images"]))) else "-")
        ag = f"{r['greedy_agree']}/{WARMUP + args.steps}" if "greedy_agree" in r else ""
        dl = f"{r['max_logit_diff']:.3g}" if "max_logit_diff" in r else ""
        print(f"{r['format']:<24}{r['images']:>7}{r['ms_per_step']:>9.1f}{r['floor_ms']:>9.1f}{r['x_floor']:>8.2f}"
              f"{vs:>17}{dl:>11}{ag:>13}")
    for (name, images), what in reclaimed.items():
        if what:
            print(f"  the machine reclaimed memory while {name} ({images} images) ran: {what}")
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
    ap.add_argument("--jacobi", default="0",
                    help="speculative Jacobi window for our end-to-end images (0: off), or 'auto'")
    ap.add_argument("--images", type=int, nargs="+", default=[1, 8], help="images per end-to-end request")
    ap.add_argument("--parallel", type=int, default=4, help="images of the --steps batch figure (CFG doubles the rows)")
    ap.add_argument("--new-tokens", type=int, default=32, help="answer length for the decode figure")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="times each contender's process runs, in turn")
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
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one contender, in a process of its own
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
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
    args.num_gen_tokens = cfg.num_gen_tokens
    torch.set_grad_enabled(False)
    if args.child:
        kind, _, name = args.child.partition(":")
        result = steps_child(cfg, name, args) if kind == "steps" else e2e_child(name, args, overrides)
        torch.save(result, args.child_out)
        return
    report: dict = {"preset": args.preset, "overrides": overrides, "threads": torch.get_num_threads(),
                    "torch": torch.__version__}
    if args.steps:
        report["decode_step"] = bench_steps(args)
    if args.parts:
        report["parts"] = bench_parts(cfg, args)
    if not args.no_e2e:
        report["end_to_end"] = bench_end_to_end(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


def e2e_child(name: str, args: argparse.Namespace, overrides: dict) -> dict:
    """One end-to-end contender (`ours` or `transformers`) in this process."""
    dev = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, dev)
    pipe = JanusPipeline.from_preset(args.preset, device=dev, dtype=dtype, **overrides)
    if name == "ours":
        prepare_for_inference(pipe.model, args.quantize)
        figures = bench_openjanus(pipe, args)
        # The floor of a token step: the LLM and image-head weights read once.
        figures["floor bytes"] = floor_bytes(pipe.model)
        pipe.close()
    else:
        from openjanus.checkpoints import save_model

        processor, und_size = pipe.processor, pipe.und_image_size
        with tempfile.TemporaryDirectory() as tmp:
            save_model(pipe.model, tmp, layout="hf")
            pipe.close()
            del pipe
            gc.collect()  # our copy goes before transformers loads its own
            # The stand-in tokenizer's placeholder id, so transformers finds the image positions.
            cfg_path = Path(tmp) / "config.json"
            raw = json.loads(cfg_path.read_text())
            raw["image_token_id"] = processor.tokenizer.image_id
            cfg_path.write_text(json.dumps(raw))
            figures = bench_transformers(tmp, processor, dtype, dev, und_size, args)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return {"figures": figures, "reclaimed": dict(RECLAIMED), "dtype": str(dtype).removeprefix("torch."),
            "device": where}


def bench_end_to_end(args: argparse.Namespace) -> dict:
    dev = resolve_device(args.device)
    bw = bandwidth(dev)  # before any model exists
    runs = {name: in_child(args, f"e2e:{name}") for name in (["ours"] if args.no_peer else ["ours", "transformers"])}
    ours = runs["ours"]
    if ours is None:
        raise SystemExit("our end-to-end run failed")
    peer = runs.get("transformers")
    peer_fig = peer["figures"] if peer else None
    fig = ours["figures"]
    n_tok = args.num_gen_tokens
    fig["floor ms"] = 1000 * fig.pop("floor bytes") / bw
    for n in args.images:
        fig[f"ms/token step ({n} img)"] = 1000 * fig[f"s/request ({n} img)"] / n_tok
        fig[f"x floor ({n} img)"] = fig[f"ms/token step ({n} img)"] / fig["floor ms"]
        if peer_fig:
            peer_fig[f"ms/token step ({n} img)"] = 1000 * peer_fig[f"s/request ({n} img)"] / n_tok
    print(f"\nend to end: preset {args.preset}, {ours['dtype']} (transformers too), quantize {args.quantize}, "
          f"jacobi {args.jacobi}, {ours['device']}, torch {torch.__version__}, one prompt, {args.new_tokens}-token "
          f"answers, median of {args.repeats}; each contender in its own process")
    reclaimed = {**{("openjanus", k): v for k, v in ours["reclaimed"].items()},
                 **{("transformers", k): v for k, v in (peer["reclaimed"] if peer else {}).items()}}
    print(f"{'metric':<26}{'openjanus':>12}" + (f"{'transformers':>14}{'ratio':>9}" if peer_fig else ""))
    for key, value in fig.items():
        line = f"{key:<26}{value:>12.3f}"
        if peer_fig and key in peer_fig:
            # The timed runs a figure comes from: a request's, the prefill's, the answer's (and prefill).
            labels = [f"{n} images" for n in args.images if f"({n} img)" in key] or \
                (["prefill"] if key.startswith("prefill") else ["prefill", "answer"])
            if any((who, lab) in reclaimed for who in ("openjanus", "transformers") for lab in labels):
                line += f"{peer_fig[key]:>14.3f}{'reclaim':>9}"
            else:
                # Ratio > 1 means openjanus is better (higher throughput or lower latency).
                lower_better = key.startswith(("s/", "ms", "prefill"))
                ratio = peer_fig[key] / value if lower_better else value / peer_fig[key]
                line += f"{peer_fig[key]:>14.3f}{ratio:>8.2f}x"
        print(line)
    for (who, label), what in reclaimed.items():
        print(f"  the machine reclaimed memory while {who} timed {label}: {what} (no ratio printed from it)")
    if peer is None and not args.no_peer:
        print("(transformers failed or is not installed: no peer figures)")
    return {"openjanus": fig, "transformers": peer_fig, "reclaimed": {f"{w} {k}": v for (w, k), v in reclaimed.items()}}


if __name__ == "__main__":
    main()
