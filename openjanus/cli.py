"""`openjanus` command line: a thin layer of typed functions over `JanusPipeline`.

Every command that loads a model takes the same model flags (--model: a checkpoint folder;
janus-shapes or nothing for the shipped demo model; a preset name for random weights; --device,
--dtype, --quantize, --roles, --check-finite) and, when it runs requests, the same engine flags
(--rows, --kv-cache-gib, --compile, --queue): `openjanus.options`. Each command module has a
`register(subparsers)`; this module registers its own commands (chat, generate, vq, info) the
same way and is the only one that imports the others. Errors are one line with exit code 2,
usage errors included.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from openjanus.allocator import keep_freed_memory
from openjanus.errors import UserError
from openjanus.model_card import ModelCard, demo_card
from openjanus.options import (
    EngineOptions,
    ExamplesHelpFormatter,
    ModelOptions,
    Parser,
    add_jacobi_options,
    add_sampling,
    add_seed,
    demo_examples,
    integer_flag,
    jacobi_flag,
    model_default,
    number_flag,
    open_pipeline,
    sampling_params,
)
from openjanus.requests import MAX_SEED, ChatRequest, ImageRequest, Message


def image_size(text: str) -> tuple[int, int]:
    """A WIDTHxHEIGHT flag (pixels); whether the model can make that size is checked with the model."""
    from openjanus.canvas import parse_size

    try:
        return parse_size(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

__all__ = ["build_parser", "main", "register", "MAX_SEED"]

# --- chat -------------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> None:
    """Answer a question about images (one-shot), or chat interactively when no question is given."""
    from openjanus.images import load_image

    with open_pipeline(args) as pipe:
        images = [load_image(p) for p in args.image]
        sampling = sampling_params(args, pipe.card.defaults.chat.sampling)
        opts = dict(max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed)
        if args.question:
            question = " ".join(args.question)
            _notice(pipe.card, question, "question")
            _stream_answer(pipe, [Message("user", [*images, question])], opts)
        else:
            _interactive(pipe, images, opts)


def _notice(card: ModelCard, text: str, kind: str) -> None:
    """One line on stderr naming the words of `text` the model never saw (it still runs)."""
    note = card.notice(text, kind)
    if note is not None:
        print(note, file=sys.stderr)


def _stream_answer(pipe, messages, opts) -> str:
    handle = pipe.submit(ChatRequest(messages, **opts))
    started = False
    try:
        for event in handle:
            piece = event.text if started else event.text.lstrip()
            started = started or bool(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        handle.cancel()
        raise
    sys.stdout.write("\n")
    return handle.result().text


def _interactive(pipe, images, opts) -> None:
    from openjanus.images import ImageLoadError, load_image

    print("openjanus chat: type a message; /image PATH attaches an image to your next message, "
          "/reset clears the conversation, /quit exits.", file=sys.stderr)
    history: list = []
    pending = list(images)
    while True:
        try:
            line = input(">>> ").strip()
        except EOFError:
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            history, pending = [], []
            continue
        if line.startswith("/image "):
            try:
                pending.append(load_image(line[len("/image "):].strip()))
            except ImageLoadError as e:
                print(f"error: {e}", file=sys.stderr)
            continue
        if line.startswith("/"):
            # A mistyped command must not reach the model as a message.
            print(f"error: unknown command {line.split()[0]!r}; commands: /image PATH, /reset, /quit",
                  file=sys.stderr)
            continue
        _notice(pipe.card, line, "question")
        turn = Message("user", [*pending, line])
        try:
            answer = _stream_answer(pipe, history + [turn], opts)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        history += [turn, Message("assistant", answer)]
        pending = []


# --- generate ---------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> None:
    """Generate images from text prompts; writes image_{i}.png, tokens.npy and run.json to --out.
    With --prompts FILE.jsonl: a resumable batch job over a prompt file (torchrun shards it)."""
    if args.prompts is not None:
        if args.prompt:
            raise UserError("give prompts as arguments or --prompts FILE.jsonl, not both")
        if args.best_of > 1:
            raise UserError("--best-of works on prompts given as arguments, not on a --prompts batch job")
        _generate_prompt_file(args)
        return
    if not args.prompt:
        raise UserError("no prompt given: pass one or more prompts, or --prompts FILE.jsonl")
    card = _model_card(args)
    sampling = sampling_params(args, card.defaults.image.sampling)  # None: the model's defaults whole
    for prompt in args.prompt:
        _notice(card, prompt, "prompt")
    # Prompt i uses seed + i, so two prompts of one run never share a random stream.
    requests = [ImageRequest(p, n=args.n, guidance=args.guidance, sampling=sampling, seed=args.seed + i,
                             jacobi=args.jacobi, jacobi_sampler=args.jacobi_sampler,
                             jacobi_branches=args.jacobi_branches, size=args.size,
                             seed_per_image=args.seed_per_image)
                for i, p in enumerate(args.prompt)]
    _generate_to_folder(args, requests, {"size": args.size})


def cmd_edit(args: argparse.Namespace) -> None:
    """Edit, inpaint or outpaint an image: the masked area (transparent pixels of --mask, the
    --region box, or the image's own transparency) or the --outpaint extension is regenerated
    from the prompt, the rest kept; writes image_{i}.png, tokens.npy and run.json to --out."""
    from openjanus.canvas import parse_outpaint, parse_region

    for name in ("image", "mask"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise UserError(f"--{name} {path}: no such file")
    region = parse_region(args.region) if args.region is not None else None
    outpaint = parse_outpaint(args.outpaint) if args.outpaint is not None else None
    card = _model_card(args)
    _notice(card, " ".join(args.prompt), "prompt")
    sampling = sampling_params(args, card.defaults.image.sampling)
    requests = [ImageRequest(" ".join(args.prompt), n=args.n, guidance=args.guidance, sampling=sampling,
                             seed=args.seed, jacobi=args.jacobi, jacobi_sampler=args.jacobi_sampler,
                             jacobi_branches=args.jacobi_branches, size=args.size,
                             image=Path(args.image),
                             mask=Path(args.mask) if args.mask else None, region=region, outpaint=outpaint,
                             overlap=args.overlap, keep_pixels=args.keep_pixels)]
    _generate_to_folder(args, requests, {"image": str(args.image), "mask": args.mask, "region": region,
                                         "outpaint": outpaint, "size": args.size, "overlap": args.overlap,
                                         "keep_pixels": args.keep_pixels})


def _generate_to_folder(args: argparse.Namespace, requests: list[ImageRequest], extra: dict) -> None:
    out = Path(args.out)
    written = ("run.json", "tokens.npy")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not args.overwrite and out.is_dir() and any(
            p.name in written or (p.name.startswith("image_") and p.suffix == ".png") for p in out.iterdir()):
        raise UserError(f"{out} already holds the output of a run (image_*.png / tokens.npy / run.json); "
                        "choose another folder or pass --overwrite")
    with open_pipeline(args) as pipe:
        _generate(pipe, args, out, requests, extra)


def _generate(pipe, args: argparse.Namespace, out: Path, requests: list[ImageRequest], extra: dict) -> None:
    import json
    import time

    import numpy as np

    engine = pipe.engine.config
    t0 = time.perf_counter()
    ratings = None
    if getattr(args, "best_of", 1) > 1:
        from openjanus.posttrain.best_of import best_of

        results, ratings = best_of(pipe, requests, args.best_of)
    else:
        results = pipe.run(requests, progress=True, desc=f"sampling {args.n * len(requests)} image(s)")
    seconds = time.perf_counter() - t0
    # Only now, with everything generated, touch the output folder: a failed run leaves nothing.
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for r, res in enumerate(results):
        for j, im in enumerate(res.images):
            name = f"image_{len(files)}.png"
            im.save(out / name)
            # With a seed of its own, `-n 1 --seed SEED` regenerates the image alone, pixel for pixel;
            # images that shared their request's stream come back with its seed and n.
            files.append({"file": name, "prompt": res.request.prompt,
                          "seed": res.seeds[j] if res.seeds is not None else res.seed,
                          "request_seed": res.seed, "index": j, "own_stream": res.seeds is not None})
            if ratings is not None:  # the model's own P(yes) for the kept image (--best-of)
                files[-1]["self_rating"] = round(ratings[r][j], 6)
    tokens = np.concatenate([r.tokens.numpy() for r in results]).astype(np.int64)
    np.save(out / "tokens.npy", tokens)
    ran = results[0].request  # the settings as run: flags over the model's defaults
    run = {
        "model": pipe.name, "device": str(pipe.device), "dtype": str(pipe.dtype).removeprefix("torch."),
        "prompts": [r.prompt for r in requests], "n": args.n, "guidance": ran.guidance,
        "temperature": ran.sampling.temperature,
        "top_k": ran.sampling.top_k, "top_p": ran.sampling.top_p, "seed": args.seed, "jacobi": args.jacobi,
        "jacobi_sampler": ran.jacobi_sampler, "jacobi_branches": ran.jacobi_branches,
        "seed_per_image": ran.seed_per_image,
        "quantize": args.quantize, "roles": args.roles, "weights": pipe.weights, "rows": engine.rows,
        "kv_cache_gib": engine.kv_cache_gib, "compile": engine.compile, "seconds": round(seconds, 3),
        "forward_passes": sum(r.cost.forward_passes for r in results),
        "tokens_per_image": int(tokens.shape[1]), "token_grid": list(results[0].grid or (pipe.model.cfg.vq.grid,) * 2),
        "image_size": list(results[0].size), **extra, "best_of": getattr(args, "best_of", 1), "adapter": args.adapter,
        "images": files,
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(f"wrote {len(files)} image(s), tokens.npy {list(tokens.shape)} and run.json to {out} "
          f"({seconds:.1f} s)", file=sys.stderr)


def _generate_prompt_file(args: argparse.Namespace) -> None:
    """`generate --prompts`: see `openjanus.batch_job` (one engine per process, torchrun shards)."""
    from openjanus.batch_job import BatchSettings, run_batch_job
    from openjanus.devices import resolve_device
    from openjanus.distributed import env_dist_info

    device = resolve_device(args.device, env_dist_info().local_rank)  # one GPU per rank
    args.device = str(device)
    card = _model_card(args)  # the job records its settings: flags over the model's defaults, resolved
    sampling = sampling_params(args, card.defaults.image.sampling) or card.defaults.image.sampling
    guidance = card.defaults.image.guidance if args.guidance is None else args.guidance

    def settings_of(pipe) -> BatchSettings:
        jacobi_sampler = ImageRequest("-", jacobi=args.jacobi, jacobi_sampler=args.jacobi_sampler,
                                      jacobi_branches=args.jacobi_branches).jacobi_sampler if args.jacobi else None
        # Branches change sampled images only with mcsjd/sjd (greedy and gumbel give the same tokens).
        shaping = args.jacobi_branches > 1 and jacobi_sampler != "gumbel" and sampling.temperature > 0
        return BatchSettings(weights=pipe.weights, temperature=sampling.temperature, top_k=sampling.top_k,
                             top_p=sampling.top_p, guidance=guidance, seed=args.seed, jacobi=args.jacobi,
                             jacobi_sampler=jacobi_sampler, jacobi_branches=args.jacobi_branches if shaping else None)

    def request_of(unit) -> ImageRequest:
        return ImageRequest(unit.line.prompt, n=1, guidance=unit.guidance, sampling=sampling, seed=unit.seed,
                            jacobi=args.jacobi, jacobi_sampler=args.jacobi_sampler,
                            jacobi_branches=args.jacobi_branches, size=unit.line.size)

    run_batch_job(Path(args.prompts), Path(args.out), load=lambda: open_pipeline(args), settings_of=settings_of,
                  request_of=request_of, geometry=_geometry(args.model), device=device,
                  on_bad_line=args.on_bad_line, overwrite=args.overwrite)


def _model_card(args: argparse.Namespace) -> ModelCard:
    """The model's card, read before its weights load: the flags go over its defaults, and its
    vocabulary names unknown words of the prompts."""
    from openjanus.inference.pipeline import resolve_model_source

    source = resolve_model_source(args.model)
    return ModelCard.read(source) if isinstance(source, Path) else ModelCard()


def _geometry(model: str | None):
    """The image token grid a model generates, from its config alone (no weights loaded)."""
    from openjanus.canvas import Geometry
    from openjanus.checkpoints import read_config
    from openjanus.config import JanusConfig
    from openjanus.inference.pipeline import resolve_model_source

    source = resolve_model_source(model)
    cfg = JanusConfig.from_name(source) if isinstance(source, str) else read_config(source)[0]
    return Geometry.of(cfg)


# --- vq ---------------------------------------------------------------------------------------


def cmd_vq(args: argparse.Namespace) -> None:
    """Round-trip an image through the VQ tokenizer (image -> image tokens -> image) and print the
    PSNR of the reconstruction."""

    from openjanus.images import load_image

    image = load_image(args.image)
    with open_pipeline(args) as pipe:
        _vq(pipe, image, args)


def _vq(pipe, image, args: argparse.Namespace) -> None:
    import numpy as np

    from openjanus.images import preprocess_gen_image

    tokens = pipe.encode_images([image])
    recon = pipe.decode_tokens(tokens)[0]
    ref = ((preprocess_gen_image(image, pipe.image_size).numpy().transpose(1, 2, 0) + 1) * 127.5)
    mse = float(np.mean((ref - np.asarray(recon, dtype=np.float64)) ** 2))
    psnr = float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
    if args.out:
        recon.save(args.out)
    used = len(set(tokens[0].tolist()))
    print(f"image tokens: {tokens.shape[1]} ({pipe.model.cfg.vq.grid}x{pipe.model.cfg.vq.grid}), distinct {used}; "
          f"PSNR {psnr:.2f} dB")


# --- info -------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> None:
    """Parameter counts per part, and the memory a request of -n images needs: weights in the
    chosen format, KV cache, and how the engine's rows and KV budget split it."""
    import torch

    from openjanus.checkpoints import read_config
    from openjanus.config import JanusConfig
    from openjanus.devices import resolve_device, resolve_dtype
    from openjanus.inference.engine import kv_bytes_per_token, rows_that_fit
    from openjanus.inference.pipeline import prepare_for_inference, resolve_model_source
    from openjanus.model.janus import Janus

    source = resolve_model_source(args.model)
    if isinstance(source, str):
        cfg = JanusConfig.from_name(source)
    else:
        cfg, layout = read_config(source)
    dtype = resolve_dtype(args.dtype, resolve_device(args.device))
    with torch.device("meta"):
        model = Janus(cfg).to(dtype)
    counts = model.param_counts()
    total = sum(counts.values())
    # The weights as inference holds them: int8 LLM and heads keep one scale per output channel.
    prepare_for_inference(model, args.quantize)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    quantized = "" if args.quantize in (None, "none") else f", {args.quantize} LLM and heads"
    fmt = str(dtype).removeprefix("torch.") + quantized
    print(f"model: {source}   weights: {fmt}")
    for name, n in counts.items():
        print(f"  {name:<14} {n:>15,d}")
    print(f"  {'total':<14} {total:>15,d}   weights: {weights / 2**30:.2f} GiB")
    c = cfg.llm
    seq = args.seq_len or (args.prompt_len + cfg.num_gen_tokens)
    step = 1 if args.seq_len else 2  # image generation runs cond + uncond rows
    rows = args.n * step
    per_row = seq * kv_bytes_per_token(model)  # the engine's own count, for the format the model holds
    kv = rows * per_row
    what = f"{rows} rows x {seq} positions" + ("" if args.seq_len else f" ({args.n} images with CFG)")
    print(f"KV cache: {kv / 2**30:.3f} GiB for {what}")
    engine = EngineOptions.from_args(args)
    fit = max(step, rows_that_fit(model, seq, engine) // step * step)  # the engine's own rule
    if rows <= fit:
        print(f"together: {(weights + kv) / 2**30:.2f} GiB (weights + KV cache) in one batch")
    else:
        print(f"the engine (--rows {engine.rows}, --kv-cache-gib {engine.kv_cache_gib:g}) holds {fit} rows: "
              f"{args.n} run as batches of {fit // step}, {(weights + fit * per_row) / 2**30:.2f} GiB "
              f"(weights + KV cache); in one batch {(weights + kv) / 2**30:.2f} GiB")
    print(f"LLM: dim {c.dim}, {c.n_layers} layers, {c.n_heads} heads ({c.n_kv_heads} kv), ffn {c.ffn_dim}, "
          f"vocab {c.vocab_size}; image tokens: {cfg.num_und_tokens} understanding, {cfg.num_gen_tokens} generation")
    if args.lora_rank:
        from openjanus.train.memory import lora_training_memory

        for line in lora_training_memory(cfg, total, rank=args.lora_rank, batch=args.train_batch).lines():
            print(line)
    if args.size is not None:
        _info_canvas(cfg, args, per_row, dtype.itemsize, weights)


def _info_canvas(cfg, args: argparse.Namespace, per_row: int, nbytes: int, weights: int) -> None:
    """What an image of --size takes: its token grid, the sliding windows and their waves, the
    tokens sampled and the forward passes, the KV cache of the widest wave, and the VQ decoder's
    largest activation over the whole canvas."""
    import torch

    from openjanus.canvas import Geometry, check_size, plan_windows

    geo = Geometry.of(cfg)
    width, height = check_size(*args.size, geo)
    rows, cols = height // geo.patch, width // geo.patch
    windows = plan_windows(torch.ones(rows, cols, dtype=torch.bool), geo.native, args.overlap)
    waves = max(w.wave for w in windows) + 1
    widest = max(sum(w.wave == k for w in windows) for k in range(waves))
    sampled = rows * cols
    kv = widest * args.n * 2 * per_row
    # The decoder's first level runs at full resolution with base_channels x channel_mult[0] channels.
    top = cfg.vq.base_channels * cfg.vq.channel_mult[0] * width * height * nbytes
    print(f"{width}x{height}: {rows} x {cols} = {sampled} image tokens ({sampled / geo.native ** 2:.2f} x native); "
          f"{len(windows)} windows of {geo.native} x {geo.native} (overlap {args.overlap:g}) in {waves} waves, "
          f"at most {widest} at once")
    print(f"  sampled: {sampled} tokens per image, in {sampled} forward passes (each window: its prefill with the "
          f"known tokens before its first sampled one, then one pass per sampled token but its last, a known "
          f"run riding along with the token before it)")
    print(f"  KV cache: {kv / 2**30:.3f} GiB for {args.n} image(s) ({widest} window(s) x 2 rows x "
          f"{args.prompt_len + cfg.num_gen_tokens} positions); with the weights {(weights + kv) / 2**30:.2f} GiB")
    print(f"  VQ decode of the whole canvas: its largest single activation is {top / 2**30:.2f} GiB per image "
          f"({cfg.vq.base_channels * cfg.vq.channel_mult[0]} channels x {width} x {height})")


# --- registration and entry point ---------------------------------------------------------------


def register(sub: Any) -> None:
    """chat, generate, vq and info, registered as every command module registers its own."""
    p = sub.add_parser("chat", help="ask about images (interactive without a question)",
                       formatter_class=ExamplesHelpFormatter, epilog=demo_examples(
                           'openjanus generate --out shapes/ -n 4 "{prompt}"',
                           'openjanus chat --image shapes/image_0.png "{question}"',
                           "openjanus chat --image shapes/image_0.png      # interactive: /image, /reset, /quit"))
    ModelOptions.add_to(p)
    EngineOptions.add_to(p)
    add_seed(p)
    add_sampling(p, "chat")
    p.add_argument("question", nargs="*", help="the question; omit for an interactive chat")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--max-new-tokens", type=integer_flag(1), default=None,
                   help="answer length cap (default: the model's max_new_tokens from its generation_config.json, "
                        f"the demo model: {demo_card().defaults.chat.max_new_tokens}; without one, what the "
                        "context leaves, up to 512)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("generate", help="text-to-image", formatter_class=ExamplesHelpFormatter, epilog=demo_examples(
        'openjanus generate --out shapes/ -n 4 --seed 7 "{prompt}"',
        "# any one image again, alone: its own seed is in shapes/run.json",
        'openjanus generate --out one/ -n 1 --seed SEED "{prompt}"'))
    ModelOptions.add_to(p)
    EngineOptions.add_to(p)
    add_seed(p)
    add_sampling(p, "image")
    p.add_argument("prompt", nargs="*", help="one or more prompts (or --prompts FILE.jsonl)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                   help="a batch job: one JSON object per line (prompt; optional id, n, seed, guidance, size, "
                        "meta); writes images/, tokens/ and manifest.jsonl as it goes, a re-run skips what is "
                        "done, and under torchrun each process takes its share")
    p.add_argument("--on-bad-line", choices=["stop", "skip"], default="stop",
                   help="--prompts: a malformed line stops the job before it starts (stop), or is reported "
                        "and left out (skip)")
    p.add_argument("-n", type=integer_flag(1), default=ImageRequest.n, help="images per prompt")
    p.add_argument("--guidance", type=number_flag(0), default=None,
                   help="(--prompts: for lines without their own) classifier-free guidance weight, >= 0: 1 = none, "
                        "0 = the unconditional image " + model_default(demo_card().defaults.image.guidance))
    p.add_argument("--jacobi", type=jacobi_flag, default=ImageRequest.jacobi,
                   help="speculative Jacobi window: drafts per forward pass (0 = off), or 'auto' to pick "
                        "the window (or none) from what this machine measures")
    add_jacobi_options(p)
    p.add_argument("--seed-per-image", action="store_true",
                   help="give each image a random stream of its own (recorded in run.json), so -n 1 --seed <its seed> "
                        "regenerates it alone; without it the images share one stream, as the official sampler does")
    p.add_argument("--size", type=image_size, default=None,
                   help="WIDTHxHEIGHT in pixels, multiples of the image token size (16 px for Janus-Pro), from the "
                        "native size up to 4x it per side: larger or non-square images by a sliding window")
    p.add_argument("--best-of", type=integer_flag(1), default=1, metavar="N",
                   help="sample N candidates per image and keep the ones the model itself rates highest "
                        "(its yes/no verdict on 'Does this image show: <prompt>?'); 1 = off")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that holds an earlier run (--prompts: remove that job's outputs "
                        "and start again)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edit", help="edit, inpaint or outpaint an image from a prompt")
    ModelOptions.add_to(p)
    EngineOptions.add_to(p)
    add_seed(p)
    add_sampling(p, "image")
    p.add_argument("prompt", nargs="+", help="what the image should show (the whole image, not only the change)")
    p.add_argument("--image", required=True, help="the image to edit")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--mask", default=None,
                       help="PNG whose fully transparent pixels mark the area to regenerate (OpenAI's convention); "
                            "without --mask, --region or --outpaint the image's own transparency is the mask")
    where.add_argument("--region", default=None, help="x0,y0,x1,y1: the pixel box of the image to regenerate")
    where.add_argument("--outpaint", default=None,
                       help="extend the image: SIDE=PIXELS[,...] with sides left, right, up, down (e.g. right=128)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("-n", type=integer_flag(1), default=ImageRequest.n, help="images")
    p.add_argument("--guidance", type=number_flag(0), default=None,
                   help="classifier-free guidance weight, >= 0 " + model_default(demo_card().defaults.image.guidance))
    p.add_argument("--size", type=image_size, default=None,
                   help="WIDTHxHEIGHT of the result (default: the image's aspect, short side native); the image is "
                        "scaled to cover it and centre-cropped")
    p.add_argument("--overlap", type=number_flag(), default=ImageRequest.overlap,
                   help="sliding-window overlap, a fraction of the window side, for sizes above native")
    p.add_argument("--keep-pixels", action=argparse.BooleanOptionalAction, default=ImageRequest.keep_pixels,
                   help="show the source's own pixels where its tokens are kept, fading into the regenerated area "
                        "(default); --no-keep-pixels: the whole image as the VQ decoder reconstructs it")
    p.add_argument("--jacobi", type=jacobi_flag, default=ImageRequest.jacobi,
                   help="speculative Jacobi window (0 = off), or 'auto'")
    add_jacobi_options(p)
    p.add_argument("--overwrite", action="store_true", help="write into a folder that holds an earlier run")
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("vq", help="image -> VQ tokens -> image, printing the PSNR")
    ModelOptions.add_to(p)
    add_seed(p)
    p.add_argument("image", help="image file")
    p.add_argument("--out", default=None, help="write the reconstruction here")
    p.set_defaults(func=cmd_vq)

    p = sub.add_parser("info", help="parameter counts and memory")
    ModelOptions.add_to(p, weights=False)  # reads the config only: no prompt, no weights
    EngineOptions.add_to(p, batch_only=True)
    p.add_argument("-n", type=integer_flag(1), default=ImageRequest.n,
                   help="images of one request (or sequences, with --seq-len) for the KV-cache estimate")
    p.add_argument("--prompt-len", type=integer_flag(1), default=64, help="prompt tokens assumed for image generation")
    p.add_argument("--seq-len", type=integer_flag(1), default=None,
                   help="estimate the KV cache for plain sequences of this length")
    p.add_argument("--size", type=image_size, default=None,
                   help="also state what an image of WIDTHxHEIGHT takes (tokens, windows, memory)")
    p.add_argument("--overlap", type=number_flag(), default=ImageRequest.overlap,
                   help="sliding-window overlap for --size")
    p.add_argument("--lora-rank", type=integer_flag(0), default=16,
                   help="LoRA rank for the training-memory estimate (0: leave it out)")
    p.add_argument("--train-batch", type=integer_flag(1), default=4,
                   help="sequences per step for the training-memory estimate")
    p.set_defaults(func=cmd_info)


def _command_modules() -> list[Any]:
    """Every command group's `register` (evaluation, training, serving, demo live next to their
    code; the serve extra's packages are imported only when `openjanus serve` runs)."""
    from openjanus import demo
    from openjanus.eval import commands as eval_commands
    from openjanus.posttrain import commands as posttrain_commands
    from openjanus.serve import commands as serve_commands
    from openjanus.train import commands as train_commands

    return [register, eval_commands.register, train_commands.register, posttrain_commands.register,
            serve_commands.register, demo.register]


def build_parser() -> argparse.ArgumentParser:
    from openjanus import __version__

    parser = Parser(prog="openjanus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # What training needs from evaluation, given by the CLI (training imports no evaluation code).
    parser.set_defaults(eval_hooks=_benchmark_eval_hook)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register_commands in _command_modules():
        register_commands(sub)
    return parser


def _benchmark_eval_hook(*args: Any) -> Any:
    """`openjanus.eval.hook.benchmark_eval_hook`, imported when a training run asks for it (it
    loads the benchmark runners and the pipeline, too much for every command's start)."""
    from openjanus.eval.hook import benchmark_eval_hook

    return benchmark_eval_hook(*args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "train":
        keep_freed_memory()  # inference: no page faults on every large activation
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as e:
        # Files that cannot be read or written, and invalid values from deeper layers.
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
