"""`openjanus train`: run a training config, export a checkpoint, pretokenize T2I data.

    openjanus train CONFIG [--resume [CKPT]] [--override KEY=VALUE ...]
    openjanus train export CKPT --out DIR [--dtype bfloat16] [--tokenizer DIR] [--overwrite]
    openjanus train pretokenize --model DIR --data FILES --out DIR
    openjanus train tokenizer --data FILES --vocab-size N --out DIR
    torchrun --nproc_per_node 8 -m openjanus.cli train CONFIG      # many GPUs / nodes
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from openjanus.options import Parser, integer_flag

USAGE = """openjanus train CONFIG [--resume [CKPT]] [--override KEY=VALUE ...]
       openjanus train export CKPT --out DIR [--dtype DTYPE] [--tokenizer DIR] [--overwrite]
       openjanus train pretokenize --model DIR --data FILE [FILE ...] --out DIR [...]
       openjanus train tokenizer --data FILE [FILE ...] --vocab-size N --out DIR
       openjanus train plot RUN [RUN ...] --out losses.svg"""

DESCRIPTION = """Train a Janus-Pro stage (stage1, stage2, stage3) or pretrain a part (vq, siglip, text)
from a JSON config; under torchrun the same command trains on many GPUs and nodes.
`export` turns a training checkpoint into the official layout that `openjanus chat` and
`openjanus generate` load; `pretokenize` encodes text-to-image data into VQ codes once;
`tokenizer` trains a small BPE tokenizer for models trained from scratch. Run
`openjanus train export -h` (or pretokenize -h, tokenizer -h) for their options; see
docs/training.md."""


def register(subparsers: Any) -> None:
    """Add `train` to the top-level `openjanus` sub-commands. The evaluation hook of configs that
    ask for eval.benchmarks comes from the parsed arguments' `eval_hooks` (the CLI sets it as a
    default of its top-level parser: training imports no evaluation code)."""
    run_options = _run_parser().format_help().split("options:", 1)[1]
    run_options = "\n".join(line for line in run_options.splitlines() if "--help" not in line)
    p = subparsers.add_parser("train", help="train a stage or a part from a config; export; pretokenize",
                              usage=USAGE, description=DESCRIPTION, epilog="training options:" + run_options,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    # The first word picks the form (a config file, or `export` / `pretokenize`), so the rest is
    # parsed by the form's own parser.
    p.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)


def _run_parser() -> argparse.ArgumentParser:
    p = Parser(prog="openjanus train", usage=USAGE, description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (JSON; TOML on Python 3.11+)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="continue from the newest checkpoint in output_dir, or from the folder CKPT")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. stage.lr=5e-4 or output_dir=runs/x (repeatable)")
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = Parser(prog="openjanus train export",
                                description="Export a training checkpoint: Janus stages to the official layout "
                                            "(for `openjanus chat/generate --model DIR`), parts to part folders.")
    p.add_argument("checkpoint",
                   help="a checkpoint folder (OUTPUT/checkpoints/step_*) or a run's output_dir (its latest)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights dtype of the export (the official releases are bfloat16)")
    p.add_argument("--tokenizer", default=None,
                   help="folder whose tokenizer/processor files are copied (default: the run's model.tokenizer)")
    p.add_argument("--overwrite", action="store_true",
                   help="export into a non-empty folder: replace the files an export writes, keep the others")
    p.add_argument("--merge", action="store_true",
                   help="for a LoRA run: fold the adapter into the base weights and write the merged model "
                        "(without it, the adapter alone is written in PEFT's format)")
    return p


def _tokenizer_parser() -> argparse.ArgumentParser:
    p = Parser(prog="openjanus train tokenizer",
                                description="Train a byte-level BPE tokenizer with the Janus special tokens on the "
                                            "text of training JSONL files (text, captions, conversations), for "
                                            "models trained from scratch; writes tokenizer.json and its configs.")
    p.add_argument("--data", required=True, action="extend", nargs="+", help="JSONL file(s), folder(s) or glob(s)")
    p.add_argument("--vocab-size", type=integer_flag(1), required=True,
                   help="ids in the vocabulary (<= the model's llm.vocab_size)")
    p.add_argument("--out", required=True, help="output folder (use it as model.tokenizer)")
    p.add_argument("--max-records", type=integer_flag(1), default=1_000_000, help="read at most this many records")
    return p


def _run_subcommand(register: Any, words: list[str]) -> None:
    """Parse `words` with the one subcommand `register` adds, then run it."""
    top = Parser(prog="openjanus train")
    register(top.add_subparsers(dest="form", required=True))
    parsed = top.parse_args(words)
    parsed.func(parsed)


def cmd_train(args: argparse.Namespace) -> None:
    """Dispatch `openjanus train ...` to run, export or pretokenize."""
    words = list(args.words)
    if words and words[0] == "export":
        cmd_export(_export_parser().parse_args(words[1:]))
    elif words and words[0] == "tokenizer":
        cmd_tokenizer(_tokenizer_parser().parse_args(words[1:]))
    elif words and words[0] == "plot":
        from openjanus.train.plot import register_plot

        _run_subcommand(register_plot, words)
    elif words and words[0] == "pretokenize":
        from openjanus.train.pretokenize import register_pretokenize

        _run_subcommand(register_pretokenize, words)
    else:
        run_args = _run_parser().parse_args(words)
        run_args.eval_hooks = getattr(args, "eval_hooks", None)
        cmd_run(run_args)


def cmd_run(args: argparse.Namespace) -> None:
    """Train from a config file (see docs/training.md)."""
    import os

    from openjanus.train.config import load_train_config
    from openjanus.train.run import run_training
    from openjanus.train.trainer import EXIT_INTERRUPTED

    cfg = load_train_config(args.config, args.override)
    state = run_training(cfg, resume=args.resume, eval_hooks=getattr(args, "eval_hooks", None))
    main = os.environ.get("RANK", "0") == "0"
    if state.interrupted:
        if main:
            resume = resume_command(args.config, args.override)
            print(f"exit status {EXIT_INTERRUPTED}: interrupted, resumable ({resume})", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)
    if main:
        print(f"trained to step {state.step}; checkpoints in {cfg.output_dir}/checkpoints", file=sys.stderr)


def resume_command(config: str, overrides: list[str]) -> str:
    """The command that continues this run: the same config and overrides (an override such as
    output_dir=... decides which run it is), quoted for a POSIX shell, then --resume."""
    import shlex

    words = ["openjanus", "train", config] + [w for o in overrides for w in ("-o", o)] + ["--resume"]
    return " ".join(shlex.quote(w) for w in words)


def cmd_export(args: argparse.Namespace) -> None:
    """Export a training checkpoint for inference or for assembling parts."""
    from pathlib import Path

    import torch

    from openjanus.errors import UserError
    from openjanus.train.checkpoint import export_checkpoint, latest_checkpoint

    folder = Path(args.checkpoint)
    if not (folder / "train_state.json").is_file():
        latest = latest_checkpoint(folder)
        if latest is None:
            raise UserError(f"{folder} is neither a training checkpoint nor a run folder with checkpoints")
        folder = latest
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    if (folder / "adapter" / "adapter_config.json").is_file():
        from openjanus.train.lora import export_lora_checkpoint

        out, note = export_lora_checkpoint(folder, Path(args.out), merge=args.merge, dtype=dtype,
                                           tokenizer_dir=args.tokenizer, overwrite=args.overwrite)
        print(note, file=sys.stderr)
        return
    if args.merge:
        raise UserError(f"--merge: {folder} is not a LoRA run's checkpoint (it holds no adapter/)")
    out, notes = export_checkpoint(folder, args.out, dtype=dtype, tokenizer_dir=args.tokenizer,
                                   overwrite=args.overwrite)
    print(f"exported {folder} to {out}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def record_texts(record: Any) -> list[str]:
    """The text a training record holds: its text, caption or message contents."""
    if not isinstance(record, dict):
        return []
    out = [record[k] for k in ("text", "caption") if isinstance(record.get(k), str)]
    for turns in (record.get("messages"), record.get("conversations")):
        if isinstance(turns, list):
            out += [t.get("content", t.get("value")) for t in turns if isinstance(t, dict)]
    return [t for t in out if isinstance(t, str) and t.strip()]


def cmd_tokenizer(args: argparse.Namespace) -> None:
    """Train a BPE tokenizer on the text of JSONL records and save it as a tokenizer folder."""
    import json

    from openjanus.errors import UserError
    from openjanus.processing import IMAGE_TOKEN, save_tokenizer_dir, train_tokenizer
    from openjanus.train.data import discover_shards

    texts: list[str] = []
    for shard in discover_shards(args.data):
        with open(shard, encoding="utf-8") as f:
            for line in f:
                if len(texts) >= args.max_records:
                    break
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                # The placeholder is a special token: keep it out of the merges.
                texts += [t.replace(IMAGE_TOKEN, " ") for t in record_texts(record)]
    if not texts:
        raise UserError(f"no text found in {', '.join(args.data)}")
    try:
        tok = train_tokenizer(texts, vocab_size=args.vocab_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    save_tokenizer_dir(tok, args.out)
    print(f"trained a {tok.get_vocab_size()}-token tokenizer on {len(texts)} texts: {args.out}", file=sys.stderr)


__all__ = ["register", "cmd_train", "cmd_run", "cmd_export", "cmd_tokenizer"]
