"""`openjanus` command line: a thin layer of typed functions over `JanusPipeline`.

Every command takes --model (a checkpoint folder; janus-shapes or nothing for the shipped demo
model; a preset name for random weights), --device, --dtype and --seed. Errors are one line
with exit code 2, usage errors included.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from openjanus.allocator import keep_freed_memory
from openjanus.errors import UserError
from openjanus.requests import MAX_SEED, Message

# --- flag types: a bad value is one line from argparse, before any model is loaded ----------


def finite_float(text: str) -> float:
    """A float flag that must be a finite number (no nan, inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float flag that must be > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def kv_cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-cache-gib", type=positive_float, default=4.0,
                   help="KV-cache memory the running requests may reserve; a larger batch runs in parts that fit")


def int_range(minimum: int, maximum: int | None = None):
    """An integer flag type that must lie in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"must be >= {minimum}" if maximum is None else f"must be in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"{bound}, got {text}")
        return value

    return parse


seed_int = int_range(0, MAX_SEED)
positive_int = int_range(1)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default in --help, except where there is none (None, False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: defaults in --help, usage errors on one line (exit code 2)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """--model, --device and --dtype, shared by every command that loads a model."""
    p.add_argument("--model", default=None,
                   help="checkpoint folder (official or Hugging Face layout), janus-shapes (the shipped "
                        "demo model, also used when omitted), or a preset name for RANDOM weights "
                        "(tiny, small, janus-pro-1b, ...)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 on GPUs and on CPUs with bf16 instructions, else fp32), float32 (the "
                        "official code's outputs exactly), bfloat16, float16")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: weight-only int8 LLM and heads (per-channel scales; bf16 activations on CPU)")


def _common(p: argparse.ArgumentParser) -> None:
    add_model_flags(p)
    p.add_argument("--seed", type=seed_int, default=0,
                   help="random seed in [0, 2**63 - 1] (same seed, same device: same output)")


def _check_finite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check-finite", action="store_true",
                   help="refuse a checkpoint whose weights hold NaN or inf, naming the first such tensor")


def _sampling(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--temperature", type=finite_float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int_range(0), default=None,
                   help="sample from the k most likely tokens only (0 = off)")
    p.add_argument("--top-p", type=finite_float, default=None,
                   help="sample from the smallest set of tokens whose probability reaches p, in (0, 1]")


def _pipeline(args: argparse.Namespace):
    from openjanus.engine import EngineConfig
    from openjanus.pipeline import JanusPipeline

    pipe = JanusPipeline.load(args.model, device=args.device, dtype=args.dtype,
                              roles=getattr(args, "roles", None), seed=args.seed,
                              check_finite=getattr(args, "check_finite", False),
                              quantize=getattr(args, "quantize", None))
    # Commands without engine flags get EngineConfig's defaults, as the lazily made engine would.
    pipe.start_engine(EngineConfig(max_rows=getattr(args, "batch_rows", None) or EngineConfig.max_rows,
                                   max_cache_gib=getattr(args, "kv_cache_gib", EngineConfig.max_cache_gib),
                                   compile_step=getattr(args, "compile", False)))
    return pipe


# --- chat -------------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> None:
    """Answer a question about images (one-shot), or chat interactively when no question is given."""
    from openjanus.images import load_image

    pipe = _pipeline(args)
    images = [load_image(p) for p in args.image]
    opts = dict(max_new_tokens=args.max_new_tokens, sampling=_sampling_params(args), seed=args.seed)
    if args.question:
        _stream_answer(pipe, [Message("user", [*images, " ".join(args.question)])], opts)
        return
    _interactive(pipe, images, opts)


def _sampling_params(args: argparse.Namespace):
    from openjanus.requests import SamplingParams

    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def _stream_answer(pipe, messages, opts) -> str:
    from openjanus.requests import ChatRequest

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
    """Generate images from text prompts; writes image_{i}.png, tokens.npy and run.json to --out."""
    import json
    import time

    import numpy as np

    from openjanus.requests import ImageRequest

    out = Path(args.out)
    written = ("run.json", "tokens.npy")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not args.overwrite and out.is_dir() and any(
            p.name in written or (p.name.startswith("image_") and p.suffix == ".png") for p in out.iterdir()):
        raise UserError(f"{out} already holds the output of a run (image_*.png / tokens.npy / run.json); "
                        "choose another folder or pass --overwrite")
    pipe = _pipeline(args)
    sampling = _sampling_params(args)
    # Prompt i uses seed + i, so two prompts of one run never share a random stream.
    requests = [ImageRequest(p, n=args.n, cfg_weight=args.cfg, sampling=sampling, seed=args.seed + i,
                             jacobi=args.jacobi) for i, p in enumerate(args.prompt)]
    t0 = time.perf_counter()
    results = pipe.run(requests, progress=True, desc=f"sampling {args.n * len(requests)} image(s)")
    seconds = time.perf_counter() - t0
    # Only now, with everything generated, touch the output folder: a failed run leaves nothing.
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for res in results:
        for j, im in enumerate(res.images):
            name = f"image_{len(files)}.png"
            im.save(out / name)
            files.append({"file": name, "prompt": res.request.prompt, "seed": res.seed, "index": j})
    tokens = np.concatenate([r.tokens.numpy() for r in results]).astype(np.int64)
    np.save(out / "tokens.npy", tokens)
    run = {
        "model": pipe.name, "device": str(pipe.device), "dtype": str(pipe.dtype).removeprefix("torch."),
        "prompts": list(args.prompt), "n": args.n, "cfg_weight": args.cfg, "temperature": sampling.temperature,
        "top_k": sampling.top_k, "top_p": sampling.top_p, "seed": args.seed, "jacobi": args.jacobi,
        "quantize": args.quantize, "weights": pipe.weights, "batch_rows": args.batch_rows,
        "kv_cache_gib": args.kv_cache_gib, "compile": args.compile, "seconds": round(seconds, 3),
        "forward_passes": sum(r.cost.forward_passes for r in results),
        "tokens_per_image": pipe.model.cfg.num_gen_tokens, "images": files,
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(f"wrote {len(files)} image(s), tokens.npy {list(tokens.shape)} and run.json to {out} "
          f"({seconds:.1f} s)", file=sys.stderr)


# --- vq ---------------------------------------------------------------------------------------


def cmd_vq(args: argparse.Namespace) -> None:
    """Round-trip an image through the VQ tokenizer and print the PSNR of the reconstruction."""
    import numpy as np

    from openjanus.images import load_image, preprocess_gen_image

    pipe = _pipeline(args)
    image = load_image(args.image)
    codes = pipe.encode_images([image])
    recon = pipe.decode_tokens(codes)[0]
    ref = ((preprocess_gen_image(image, pipe.image_size).numpy().transpose(1, 2, 0) + 1) * 127.5)
    mse = float(np.mean((ref - np.asarray(recon, dtype=np.float64)) ** 2))
    psnr = float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
    if args.out:
        recon.save(args.out)
    used = len(set(codes[0].tolist()))
    print(f"codes: {codes.shape[1]} ({pipe.model.cfg.vq.grid}x{pipe.model.cfg.vq.grid}), distinct {used}; "
          f"PSNR {psnr:.2f} dB")


# --- info -------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> None:
    """Parameter counts per part, and the memory a batch of images needs: weights in the chosen
    format, KV cache, and how the engine's KV budget splits the batch."""
    import torch

    from openjanus.checkpoints import read_config
    from openjanus.config import JanusConfig
    from openjanus.devices import resolve_device, resolve_dtype
    from openjanus.engine import EngineConfig, rows_that_fit
    from openjanus.model.janus import Janus
    from openjanus.pipeline import prepare_for_inference, resolve_model_source

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
    nbytes = torch.finfo(dtype).bits // 8
    seq = args.seq_len or (args.prompt_len + cfg.num_gen_tokens)
    rows = args.batch * (1 if args.seq_len else 2)  # image generation runs cond + uncond rows
    per_row = 2 * c.n_layers * c.n_kv_heads * seq * c.head_dim * nbytes
    kv = rows * per_row
    what = f"{rows} rows x {seq} positions" + ("" if args.seq_len else f" (batch {args.batch} images with CFG)")
    print(f"KV cache: {kv / 2**30:.3f} GiB for {what}")
    step = 1 if args.seq_len else 2
    engine = EngineConfig(max_cache_gib=args.kv_cache_gib)
    fit = max(step, rows_that_fit(model, seq, engine) // step * step)  # the engine's own rule
    if rows <= fit:
        print(f"together: {(weights + kv) / 2**30:.2f} GiB (weights + KV cache) in one batch")
    else:
        print(f"the engine (--kv-cache-gib {args.kv_cache_gib:g}, {engine.max_rows} rows at most) holds {fit} rows: "
              f"{args.batch} run as batches of {fit // step}, {(weights + fit * per_row) / 2**30:.2f} GiB "
              f"(weights + KV cache); in one batch {(weights + kv) / 2**30:.2f} GiB")
    print(f"LLM: dim {c.dim}, {c.n_layers} layers, {c.n_heads} heads ({c.n_kv_heads} kv), ffn {c.ffn_dim}, "
          f"vocab {c.vocab_size}; image tokens: {cfg.num_und_tokens} understanding, {cfg.num_gen_tokens} generation")
    if args.lora_rank:
        from openjanus.train.memory import lora_training_memory

        for line in lora_training_memory(cfg, total, rank=args.lora_rank, batch=args.train_batch).lines():
            print(line)


# --- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from openjanus import __version__

    parser = _Parser(prog="openjanus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("chat", help="ask about images (interactive without a question)")
    _common(p)
    _sampling(p, temperature=0.0)
    _check_finite_flag(p)
    p.add_argument("question", nargs="*", help="the question; omit for an interactive chat")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="answer length cap (default: what the context leaves, up to 512)")
    p.add_argument("--roles", choices=["pro", "legacy"], default=None,
                   help="chat roles: pro = <|User|>/<|Assistant|> (Janus-Pro), legacy = User/Assistant (Janus-1.3B)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("generate", help="text-to-image")
    _common(p)
    _sampling(p, temperature=1.0)
    p.add_argument("prompt", nargs="+", help="one or more prompts")
    p.add_argument("--out", required=True, help="output folder")
    _check_finite_flag(p)
    p.add_argument("-n", type=positive_int, default=1, help="images per prompt")
    p.add_argument("--cfg", type=finite_float, default=5.0, help="classifier-free guidance weight")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--batch-rows", type=int_range(2), default=None,
                   help="LLM rows decoded together (2 per image; default 64, fewer when --kv-cache-gib cannot "
                        "hold them): larger n runs in batches of this")
    kv_cache_flag(p)
    p.add_argument("--jacobi", type=int_range(0, 64), default=0, help="speculative Jacobi window (0 = off)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that holds an earlier run")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("vq", help="image -> VQ codes -> image, printing the PSNR")
    _common(p)
    _check_finite_flag(p)
    p.add_argument("image", help="image file")
    p.add_argument("--out", default=None, help="write the reconstruction here")
    p.set_defaults(func=cmd_vq)

    p = sub.add_parser("info", help="parameter counts and memory")
    _common(p)
    p.add_argument("--batch", type=positive_int, default=1,
                   help="images (or sequences with --seq-len) for the KV-cache estimate")
    p.add_argument("--prompt-len", type=positive_int, default=64, help="prompt tokens assumed for image generation")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="estimate the KV cache for plain sequences of this length")
    kv_cache_flag(p)
    p.add_argument("--lora-rank", type=int_range(0), default=16,
                   help="LoRA rank for the training-memory estimate (0: leave it out)")
    p.add_argument("--train-batch", type=positive_int, default=4,
                   help="sequences per step for the training-memory estimate")
    p.set_defaults(func=cmd_info)

    for register in _extensions():
        register(sub)
    return parser


def _extensions():
    """Sub-command groups living next to their code (evaluation, training, serving, demo); the
    serve extra's packages are imported only when `openjanus serve` runs."""
    from openjanus import demo
    from openjanus.eval import commands as eval_commands
    from openjanus.posttrain import commands as posttrain_commands
    from openjanus.serve import commands as serve_commands
    from openjanus.train import commands as train_commands

    def register_train(sub: Any) -> None:
        train_commands.register(sub, eval_hooks=_benchmark_eval_hook)

    return [eval_commands.register, register_train, posttrain_commands.register, serve_commands.register,
            demo.register]


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
