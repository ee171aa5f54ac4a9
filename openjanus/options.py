"""Command-line options shared by every command, and how commands register.

Every command module has `register(subparsers)`, adding its parser with `subparsers.add_parser`
(the sub-parsers inherit `Parser`: defaults in --help, usage errors on one line); `openjanus.cli`
calls each module's `register` and imports nothing else from them, and they import nothing from
the CLI. A command that loads a model adds `ModelOptions`' flags, one that runs requests
`EngineOptions`' as well, and builds both from the parsed flags with `open_pipeline(args)`:

    ModelOptions.add_to(p)          # --model --device --dtype --quantize --roles --check-finite
    EngineOptions.add_to(p)         # --rows --kv-cache-gib --compile --queue
    ...
    with open_pipeline(args) as pipe:   # JanusPipeline.load(model options) + start_engine(EngineConfig)

Defaults are written once, in the dataclasses (`ModelOptions` here, `EngineConfig`, the typed
requests); the flags read them from there, and --help shows them. Number flags use
`openjanus.numbers`' checks, the same the requests use.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from openjanus.errors import UserError
from openjanus.numbers import check_integer, check_number
from openjanus.requests import JACOBI_SAMPLERS, MAX_SEED, ImageRequest

if TYPE_CHECKING:
    from openjanus.inference.engine import EngineConfig
    from openjanus.inference.pipeline import JanusPipeline

__all__ = ["Parser", "number_flag", "integer_flag", "seed_flag", "ModelOptions", "EngineOptions", "open_pipeline",
           "add_seed", "add_sampling", "add_jacobi_options", "jacobi_flag", "sampling_params", "default_of",
           "model_default", "demo_examples", "ExamplesHelpFormatter"]


# --- flag types: a bad value is one line from argparse, before any model is loaded ----------


def number_flag(low: float | None = None, high: float | None = None, low_open: bool = False):
    """A flag type for a finite float in [low, high] (in (low, high] with `low_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check_number(value, low=low, high=high, low_open=low_open, text=text)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def integer_flag(low: int | None = None, high: int | None = None):
    """A flag type for an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check_integer(value, low=low, high=high)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


seed_flag = integer_flag(0, MAX_SEED)


def add_jacobi_options(p: argparse.ArgumentParser) -> None:
    """`--jacobi-sampler`: how sampled Jacobi images draw (`ImageRequest.jacobi_sampler`);
    `--jacobi-branches`: rows verifying each window (`ImageRequest.jacobi_branches`)."""
    p.add_argument("--jacobi-sampler", choices=JACOBI_SAMPLERS, default=None,
                   help="with --jacobi, how sampled images draw: mcsjd (speculative sampling, coupled redraws: the "
                        "most tokens per pass), gumbel (fixed noise per image position: the image depends on the "
                        "seed alone, whatever the window) or sjd (independent redraws); all follow plain "
                        "sampling's distribution (default: mcsjd with a window, gumbel with --jacobi auto or "
                        "--jacobi-branches)")
    p.add_argument("--jacobi-branches", type=integer_flag(1, 64), default=1, metavar="K",
                   help="with --jacobi N: verify each window on K rows at once, each with another candidate for its "
                        "first draft: fewer forward passes for K times the rows (greedy and gumbel: the same images)")


def jacobi_flag(text: str) -> int | str:
    """`--jacobi`: a window in [0, 64] (0 = off), or 'auto'."""
    return "auto" if text == "auto" else integer_flag(0, 64)(text)


# --- the parser -------------------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default in --help, except where there is none (None, False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class ExamplesHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help, and the epilog's example commands kept as written (one per line)."""


def demo_examples(*commands: str) -> str:
    """A --help epilog of example commands in the demo model's own words ({prompt} and
    {question} are its first example prompt and question)."""
    from openjanus.model_card import demo_card

    card = demo_card()
    lines = [c.format(prompt=card.example_prompts[0], question=card.example_questions[0]) for c in commands]
    return ("examples with the shipped demo model, in its own words (it knows only the shapes world's,\n"
            "listed in openjanus/assets/janus-shapes/openjanus.json):\n" + "\n".join(f"  {line}" for line in lines))


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: defaults in --help, usage errors on one line (exit code 2).
    Sub-parsers made with `add_subparsers().add_parser` are of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass `cls`'s field `name` (where the default is written)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelOptions:
    """Which model to load and how: the flags of every command that loads one.

    model: a checkpoint folder, None / "janus-shapes" for the shipped demo model, or a preset
        name (random weights). roles: the chat template's roles ("pro" for Janus-Pro, "legacy"
        for Janus-1.3B; checkpoints do not record it). check_finite: refuse weights holding NaN
        or inf. quantize: "int8" stores the LLM's and heads' weights as int8. adapter: a LoRA
        adapter folder applied unmerged.
    """

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    quantize: Literal["none", "int8"] = "none"
    roles: Literal["pro", "legacy"] = "pro"
    check_finite: bool = False
    adapter: str | None = None

    @classmethod
    def add_to(cls, p: argparse.ArgumentParser, weights: bool = True, model_help: str | None = None) -> None:
        """Add the flags. `weights=False` (a command that reads only the model's config): no
        --roles or --check-finite, which it could not honour. `model_help` replaces --model's
        help where the command gives an omitted --model its own meaning."""
        p.add_argument("--model", default=cls.model,
                       help=model_help or "checkpoint folder (official or Hugging Face layout), janus-shapes (the "
                                          "shipped demo model, also used when omitted), or a preset name for RANDOM "
                                          "weights (tiny, small, janus-pro-1b, ...)")
        p.add_argument("--device", default=cls.device,
                       help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
        p.add_argument("--dtype", default=cls.dtype,
                       help="auto (bf16 on GPUs and on CPUs with bf16 instructions, else fp32), float32 (the "
                            "official code's outputs exactly), bfloat16, float16")
        p.add_argument("--quantize", choices=["none", "int8"], default=cls.quantize,
                       help="int8: weight-only int8 LLM and heads (per-channel scales; bf16 activations on CPU)")
        if weights:
            p.add_argument("--roles", choices=["pro", "legacy"], default=cls.roles,
                           help="chat template roles: pro = <|User|>/<|Assistant|> (Janus-Pro), "
                                "legacy = User/Assistant (Janus-1.3B)")
            p.add_argument("--check-finite", action="store_true", default=cls.check_finite,
                           help="refuse a checkpoint whose weights hold NaN or inf, naming the first such tensor")
            p.add_argument("--adapter", default=cls.adapter, metavar="DIR",
                           help="apply a LoRA adapter (PEFT format: adapter_config.json + adapter_model.safetensors, "
                                "trained here or for transformers' Janus) without merging it")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        """The options of parsed flags (a command without --roles / --check-finite gets the defaults)."""
        return cls(**{f.name: getattr(args, f.name, f.default) for f in dataclasses.fields(cls)})

    def load(self, seed: int = 0) -> JanusPipeline:
        """The pipeline (its engine not yet started). `seed` initialises a preset's random weights."""
        from openjanus.inference.pipeline import JanusPipeline

        return JanusPipeline.load(self.model, device=self.device, dtype=self.dtype, roles=self.roles, seed=seed,
                                  check_finite=self.check_finite, quantize=self.quantize, adapter=self.adapter)


# --- the engine -------------------------------------------------------------------------------


class EngineOptions:
    """The engine's flags, defaulting to `EngineConfig`'s fields (the one place they are written)."""

    @staticmethod
    def add_to(p: argparse.ArgumentParser, batch_only: bool = False) -> None:
        """Add the flags. `batch_only` (a command that only reckons what a batch holds): --rows
        and --kv-cache-gib, not --compile and --queue."""
        from openjanus.inference.engine import EngineConfig  # here: training registers commands too
        p.add_argument("--rows", type=integer_flag(2), default=default_of(EngineConfig, "rows"),
                       help="LLM rows decoded together (an image takes 2, an answer 1); fewer when "
                            "--kv-cache-gib cannot hold them; larger requests run in parts")
        p.add_argument("--kv-cache-gib", type=number_flag(0, low_open=True),
                       default=default_of(EngineConfig, "kv_cache_gib"),
                       help="KV-cache memory the running requests may reserve; a larger batch runs in parts that fit")
        if batch_only:
            return
        p.add_argument("--compile", action="store_true", default=default_of(EngineConfig, "compile"),
                       help="torch.compile the decode step")
        p.add_argument("--queue", type=integer_flag(1), default=default_of(EngineConfig, "queue"),
                       help="requests waiting beyond the running batch (the server answers 429 beyond it)")

    @staticmethod
    def from_args(args: argparse.Namespace) -> EngineConfig:
        """The config of parsed flags (flags a command does not have keep EngineConfig's defaults)."""
        from openjanus.inference.engine import EngineConfig
        names = ("rows", "kv_cache_gib", "compile", "queue")
        return EngineConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def open_pipeline(args: argparse.Namespace) -> JanusPipeline:
    """The pipeline of a command's parsed flags: `ModelOptions` loaded (with --seed, for presets'
    random weights), its engine started from `EngineOptions` when the command has them. The
    command owns it: `with open_pipeline(args) as pipe:` closes it (engine thread, KV cache)."""
    pipe = ModelOptions.from_args(args).load(seed=getattr(args, "seed", 0))
    if hasattr(args, "rows"):
        try:
            pipe.start_engine(EngineOptions.from_args(args))
        except BaseException:
            pipe.close()
            raise
    return pipe


# --- flags of the requests ----------------------------------------------------------------------


def add_seed(p: argparse.ArgumentParser, help: str = "random seed in [0, 2**63 - 1] (same seed, same device: "
                                                     "same output)") -> None:
    p.add_argument("--seed", type=seed_flag, default=default_of(ImageRequest, "seed"), help=help)


def model_default(value: object) -> str:
    """How --help states a default that the model decides: its generation_config.json's value,
    with the shipped demo model's as the example (the help is written before a model loads)."""
    return f"(default: the model's, from its generation_config.json; the demo model: {value})"


def add_sampling(p: argparse.ArgumentParser, kind: Literal["chat", "image"]) -> None:
    """--temperature, --top-k, --top-p. Left out, each takes the model's default for `kind`
    (its generation_config.json; see `openjanus.model_card`), so the CLI asks what the Python
    API, the server and the web page ask when nobody sets them. Ranges are the requests' own."""
    from openjanus.model_card import demo_card

    demo = demo_card().defaults.chat.sampling if kind == "chat" else demo_card().defaults.image.sampling
    p.add_argument("--temperature", type=number_flag(), default=None,
                   help=f"0 = greedy {model_default(demo.temperature)}")
    p.add_argument("--top-k", type=integer_flag(0), default=None,
                   help=f"sample from the k most likely tokens only, 0 = off {model_default(demo.top_k or 0)}")
    p.add_argument("--top-p", type=number_flag(), default=None,
                   help="sample from the smallest set of tokens whose probability reaches p, in (0, 1], 1 = off "
                        + model_default(1.0 if demo.top_p is None else demo.top_p))


def sampling_params(args: argparse.Namespace, defaults):
    """The sampling flags over `defaults` (the model's SamplingParams); None when no flag was
    given, so the request takes the model's defaults whole."""
    from openjanus.requests import SamplingParams

    if args.temperature is None and args.top_k is None and args.top_p is None:
        return None
    return SamplingParams(temperature=defaults.temperature if args.temperature is None else args.temperature,
                          top_k=defaults.top_k if args.top_k is None else args.top_k,
                          top_p=defaults.top_p if args.top_p is None else args.top_p)
