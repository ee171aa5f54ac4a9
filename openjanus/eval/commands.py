"""`openjanus eval ...`: benchmarks, the scorer's own accuracy, and dataset export.

``register(subparsers)`` adds the ``eval`` command group to the main parser, as every command
module registers its commands (`openjanus.options`): the benchmarks take the shared model and
engine flags (--rows bounds what runs together; prompts and questions go to the engine as many
at a time as fill it). Each handler is a typed function of the parsed arguments; the model is
loaded inside the handlers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openjanus.eval.runners import GenerationSettings
from openjanus.options import (
    EngineOptions,
    ModelOptions,
    add_seed,
    default_of,
    integer_flag,
    number_flag,
    open_pipeline,
)
from openjanus.requests import ImageRequest

if TYPE_CHECKING:
    from openjanus.eval.report import GenerationReport, UnderstandingReport


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _model_flags(p: argparse.ArgumentParser) -> None:
    ModelOptions.add_to(p)
    EngineOptions.add_to(p)


def _gen_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=integer_flag(1), default=default_of(GenerationSettings, "n_per_prompt"),
                   help="images per prompt")
    p.add_argument("--guidance", type=number_flag(), default=ImageRequest.guidance,
                   help="classifier-free guidance weight")
    p.add_argument("--temperature", type=number_flag(0), default=ImageRequest.sampling.temperature,
                   help="sampling temperature (0 = greedy)")


def _settings(args: argparse.Namespace) -> GenerationSettings:
    """The run's sampling settings; prompts go to the engine as many at a time as fill --rows
    (an image takes two rows)."""
    return GenerationSettings(n_per_prompt=args.n, seed=args.seed, guidance=args.guidance,
                              temperature=args.temperature, batch_size=max(1, args.rows // (2 * args.n)))


def _print_scores(report: GenerationReport | UnderstandingReport, out: Path) -> None:
    if report.overall is not None:
        print(f"overall {report.overall:.4f}")
        for k, v in report.categories.items():
            print(f"  {k:<20}{v:.4f}")
    print(f"report: {out / 'report.json'}  page: {out / 'index.html'}")


# --- handlers ---------------------------------------------------------------------------------


def cmd_geneval_shapes(args: argparse.Namespace) -> None:
    """GenEval on the shapes world: generate, score without a neural network, report."""
    from openjanus.eval.runners import run_geneval_shapes

    out = Path(args.out)
    with open_pipeline(args) as pipe:
        report = run_geneval_shapes(pipe, out, per_category=args.per_category, settings=_settings(args), log=_log,
                                    prompt_seed=args.prompt_seed)
    _print_scores(report, out)


def cmd_pope_shapes(args: argparse.Namespace) -> None:
    """Understanding on the shapes world: POPE (3 settings), MME-style pairs, counting, colour,
    shape, position and description."""
    from openjanus.eval.runners import run_pope_shapes

    out = Path(args.out)
    with open_pipeline(args) as pipe:
        report = run_pope_shapes(pipe, out, n_images=args.images, seed=args.seed, image_size=args.image_size,
                                 batch_size=args.rows, log=_log)
    _print_scores(report, out)


def cmd_geneval(args: argparse.Namespace) -> None:
    """Generate for a GenEval evaluation_metadata.jsonl in GenEval's layout (scored here only
    when its classes are world shapes; otherwise run GenEval's evaluate_images.py on --out)."""
    from openjanus.eval.formats import read_geneval_metadata
    from openjanus.eval.runners import run_geneval
    from openjanus.jsonl import read_jsonl

    specs = read_geneval_metadata(args.metadata)
    records = read_jsonl(Path(args.metadata), "GenEval metadata")
    if args.limit:
        specs, records = specs[: args.limit], records[: args.limit]
    out = Path(args.out)
    with open_pipeline(args) as pipe:
        report = run_geneval(pipe, specs, out, _settings(args), _log, records=records)
    _print_scores(report, out)


def cmd_score_geneval(args: argparse.Namespace) -> None:
    """Score a GenEval-layout folder of shapes-world prompts (samples from any generator)."""
    from openjanus.eval.runners import score_geneval

    folder = Path(args.folder)
    _print_scores(score_geneval(folder, log=_log), folder)


def cmd_pope(args: argparse.Namespace) -> None:
    """Answer POPE question files and score them."""
    from openjanus.eval.runners import run_pope
    from openjanus.files import write_json

    out = Path(args.out)
    results = {}
    with open_pipeline(args) as pipe:
        for q in args.questions:
            m = run_pope(pipe, q, args.images, out, batch_size=args.rows, suffix=args.suffix, log=_log)
            results[Path(q).stem] = dataclasses.asdict(m)
            print(f"{Path(q).stem}: accuracy {m.accuracy:.4f} precision {m.precision:.4f} "
                  f"recall {m.recall:.4f} f1 {m.f1:.4f} yes-ratio {m.yes_ratio:.4f}")
    write_json(out / "report.json", {"benchmark": "POPE", "files": results})


def cmd_mme(args: argparse.Namespace) -> None:
    """Answer an MME folder, write MME's result files and score acc / acc+."""
    from openjanus.eval.runners import run_mme
    from openjanus.files import write_json

    out = Path(args.out)
    with open_pipeline(args) as pipe:
        m = run_mme(pipe, args.root, out, batch_size=args.rows, categories=args.categories or None, log=_log)
    for c, v in m["categories"].items():
        print(f"{c:<24} acc {v['acc']:.4f}  acc+ {v['acc_plus']:.4f}  score {v['score']:.2f}")
    write_json(out / "report.json", {"benchmark": "MME", **m})


def cmd_scorer_accuracy(args: argparse.Namespace) -> None:
    """Measure the shapes scorer on true, degraded and VQ round-tripped images and on wrong ones."""
    from contextlib import nullcontext

    from openjanus.files import write_json
    from openjanus.shapes.scorer_accuracy import format_table, measure, vq_roundtrip

    strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    with open_pipeline(args) if args.model else nullcontext() as pipe:
        rt = vq_roundtrip(pipe) if pipe is not None else None
        result = measure(n=args.n, image_size=args.image_size, strengths=strengths, seed=args.seed, roundtrip=rt,
                         log=_log)
    print(format_table(result))
    if args.out:
        write_json(args.out, result)


def cmd_export(args: argparse.Namespace) -> None:
    """Export the world as sharded training data."""
    from openjanus.shapes.datasets import export_dataset

    m = export_dataset(args.out, args.kind, args.n, shard_size=args.shard_size, image_size=args.image_size,
                       seed=args.seed, split=args.split, workers=args.workers, background=args.background,
                       log=_log)
    print(f"{m['samples']} {m['kind']} samples in {len(m['shards'])} shards: {Path(args.out) / 'manifest.json'}")


def cmd_write_shapes(args: argparse.Namespace) -> None:
    """Write the shapes benchmarks' input files without a model (for other toolkits)."""
    from openjanus.eval.formats import write_geneval_metadata
    from openjanus.eval.runners import build_pope_shapes
    from openjanus.shapes.tasks import benchmark_specs

    out = Path(args.out)
    write_geneval_metadata(out / "geneval" / "evaluation_metadata.jsonl", benchmark_specs(args.per_category,
                                                                                          args.prompt_seed))
    m = build_pope_shapes(out / "understanding", args.images, args.seed, args.image_size)
    print(json.dumps({"geneval": str(out / "geneval" / "evaluation_metadata.jsonl"), **m}, indent=2))


# --- registration -----------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``eval`` and its sub-commands to an argparse sub-parser set."""
    ev = subparsers.add_parser("eval", help="benchmarks (shapes world, GenEval, POPE, MME), datasets")
    sub = ev.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")
    pos_int = integer_flag(1)

    p = sub.add_parser("geneval-shapes", help="GenEval's six categories on the shapes world, scored locally")
    _model_flags(p)
    _gen_flags(p)
    add_seed(p, help="sampling seed (prompt i uses seed + i)")
    p.add_argument("--prompt-seed", type=integer_flag(0), default=0, help="which prompt set (0 is the standard one)")
    p.add_argument("--per-category", type=pos_int, default=8, help="prompts per category (half held out)")
    p.add_argument("--out", required=True, help="run folder (GenEval layout + report.json + index.html)")
    p.set_defaults(func=cmd_geneval_shapes)

    p = sub.add_parser("pope-shapes", help="POPE / MME-style / VQA questions on the shapes world")
    _model_flags(p)
    add_seed(p, help="benchmark seed")
    p.add_argument("--images", type=pos_int, default=100, help="number of images (half held out)")
    p.add_argument("--image-size", type=pos_int, default=None, help="render size (default: the model's, 64..384)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pope_shapes)

    p = sub.add_parser("geneval", help="generate for a real GenEval evaluation_metadata.jsonl")
    _model_flags(p)
    _gen_flags(p)
    add_seed(p, help="sampling seed (prompt i uses seed + i)")
    p.add_argument("--metadata", required=True, help="GenEval's prompts/evaluation_metadata.jsonl")
    p.add_argument("--limit", type=integer_flag(0), default=0, help="only the first N prompts (0: all)")
    p.add_argument("--out", required=True, help="folder in GenEval's layout for its evaluate_images.py")
    p.set_defaults(func=cmd_geneval)

    p = sub.add_parser("score-geneval", help="score a GenEval-layout folder of shapes-world samples")
    p.add_argument("folder")
    p.set_defaults(func=cmd_score_geneval)

    p = sub.add_parser("pope", help="answer and score real POPE question files")
    _model_flags(p)
    add_seed(p)
    p.add_argument("--questions", nargs="+", required=True, help="POPE question files (JSON lines)")
    p.add_argument("--images", required=True, help="folder holding the questions' images")
    p.add_argument("--suffix", default="", help="text appended to every question")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pope)

    p = sub.add_parser("mme", help="answer an MME folder and score acc / acc+")
    _model_flags(p)
    add_seed(p)
    p.add_argument("--root", required=True, help="MME folder with one sub-folder per category")
    p.add_argument("--categories", nargs="*", default=None, help="only these categories")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_mme)

    p = sub.add_parser("scorer-accuracy", help="the shapes scorer's accuracy and false-accept rate")
    ModelOptions.add_to(p, model_help="also measure after this model's VQ round trip (default: no model)")
    add_seed(p)
    p.add_argument("-n", type=pos_int, default=300, help="specs (each scored clean, degraded, and wrong)")
    p.add_argument("--image-size", type=pos_int, default=64, help="render size of the scenes")
    p.add_argument("--strengths", default="0.5,1.0", help="degradation strengths, comma-separated")
    p.add_argument("--out", default=None, help="write the full result as JSON here")
    p.set_defaults(func=cmd_scorer_accuracy)

    p = sub.add_parser("export-dataset", help="write shapes-world training data in shards")
    p.add_argument("--kind", choices=["t2i", "und", "text"], required=True)
    p.add_argument("-n", type=pos_int, required=True, help="number of samples")
    p.add_argument("--shard-size", type=pos_int, default=10_000, help="samples per shard")
    p.add_argument("--image-size", type=pos_int, default=64, help="render size of the images")
    p.add_argument("--split", choices=["train", "heldout", "any"], default="train",
                   help="which compositions: the training ones, the held-out ones, or any")
    add_seed(p)
    p.add_argument("--workers", type=pos_int, default=1, help="rendering processes")
    p.add_argument("--background", choices=["plain", "noise", "gradient", "paper"], default=None,
                   help="render every image on this background kind (default: all kinds at random)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("write-shapes", help="write the shapes benchmarks' files (no model needed)")
    add_seed(p, help="understanding images seed")
    p.add_argument("--prompt-seed", type=integer_flag(0), default=0, help="GenEval prompt set")
    p.add_argument("--per-category", type=pos_int, default=8, help="GenEval prompts per category")
    p.add_argument("--images", type=pos_int, default=100, help="images of the understanding benchmark")
    p.add_argument("--image-size", type=pos_int, default=64, help="render size of the images")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_write_shapes)
