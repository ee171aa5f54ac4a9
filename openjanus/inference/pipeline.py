"""`JanusPipeline`: model + processor + device, the one Python API that the CLI, the evaluation
harness and the server all use.

    pipe = JanusPipeline.load("path/to/Janus-Pro-1B")        # or a preset name, or None for the demo model
    result = pipe.generate(ImageRequest("a red fox in the snow", n=4, seed=7))
    reply = pipe.generate(ChatRequest.ask("What is in this picture?", ["photo.jpg"]))

Every request goes through the pipeline's engine, which batches the requests of all callers.
The pipeline owns it: `start_engine(config)` replaces it, `close()` (or leaving a `with`
block) stops it for good; a closed pipeline refuses further requests.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from openjanus import model_card
from openjanus.checkpoints import load_model
from openjanus.config import PRESETS, JanusConfig
from openjanus.devices import resolve_device, resolve_dtype
from openjanus.errors import UserError
from openjanus.hub import download as hub_download
from openjanus.hub import parse_hub_id
from openjanus.images import ImageInput
from openjanus.inference.engine import Engine, EngineConfig, RequestHandle, decode_tokens
from openjanus.model.janus import Janus
from openjanus.model.llm import fuse_projections
from openjanus.model_card import ModelCard
from openjanus.processing import JanusProcessor, standin_processor
from openjanus.quantize import Int8Linear, quantize_model
from openjanus.requests import ChatRequest, ChatResult, ImageRequest, ImageResult

# The demo model shipped with the package (see the README); used when no model is named, and
# when the model is named by its name (its architecture alone is the preset "janus-shapes-arch").
DEMO_MODEL_NAME = "janus-shapes"
DEMO_MODEL_DIR = model_card.DEMO_MODEL_DIR

# Preset names whose "random weights" notice was printed already (once per process).
_RANDOM_NOTICE_SHOWN: set[str] = set()


def resolve_model_source(model: str | Path | None) -> Path | str:
    """What `--model` names: a checkpoint folder (Path) or a preset name (str).

    An existing folder wins over a name; None and "janus-shapes" mean the shipped demo model;
    "owner/name[@revision]" is fetched through huggingface_hub's cache (`openjanus.hub`).
    """
    if model is not None and Path(model).exists():
        if not Path(model).is_dir():
            raise UserError(f"model {str(model)!r} is a file; pass the checkpoint folder that holds config.json")
        return Path(model)
    if model is None or model == DEMO_MODEL_NAME:
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            what = "no --model given and the" if model is None else "the"
            raise UserError(f"{what} demo model {DEMO_MODEL_NAME} is not installed ({DEMO_MODEL_DIR}); "
                            "pass --model DIR or a preset name")
        return DEMO_MODEL_DIR
    if isinstance(model, str) and model in PRESETS:
        return model
    if isinstance(model, str) and parse_hub_id(model) is not None:  # owner/name[@revision], no such folder
        return hub_download(model)
    raise UserError(f"model {str(model)!r} is neither a checkpoint folder nor a known name "
                    f"({', '.join([DEMO_MODEL_NAME] + sorted(PRESETS))}); a hub model is owner/name[@revision]")


def prepare_for_inference(model: Janus, quantize: str | None = None) -> Janus:
    """Fuse the LLM's projections unless the weights are plain fp32 (whose products must round as
    the official code's do), and quantize the LLM and heads if asked; in place."""
    if model.llm.embed.weight.dtype != torch.float32 or quantize not in (None, "none"):
        fuse_projections(model.llm)
    return quantize_model(model, quantize)


class JanusPipeline:
    def __init__(self, model: Janus, processor: JanusProcessor, name: str = "model",
                 engine: EngineConfig | None = None, card: ModelCard | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        # What the model folder says about using it: default settings, examples, vocabulary.
        self.card = card or ModelCard()
        self.source: Path | None = None  # the checkpoint folder it was loaded from, if any
        self._fingerprint: str | None = None
        self._engine = Engine(model, processor, engine, self.card.defaults)  # its worker starts on first use
        self._closed = False

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def load(cls, model: str | Path | None = None, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None, roles: str | None = None, seed: int = 0,
             check_finite: bool = False, quantize: str | None = None,
             adapter: str | Path | None = None) -> JanusPipeline:
        """A checkpoint folder, the shipped demo model (None or "janus-shapes"), or a preset name
        (random weights, for tests and benchmarks; says so once on stderr).

        `check_finite` refuses a checkpoint with NaN or inf weights, naming the first such tensor;
        `quantize="int8"` stores the LLM's and the heads' weights as int8 (`openjanus.quantize`);
        `adapter` applies a LoRA adapter folder (PEFT format, ours or made for transformers'
        Janus) without merging it (`openjanus train export --merge` makes merged weights).
        """
        if adapter is not None and quantize not in (None, "none"):
            raise UserError("--adapter with --quantize int8 is not supported: merge the adapter first "
                            "(openjanus train export RUN --merge) and quantize the merged model")
        pipe = cls._load(model, device, dtype, roles, seed, check_finite)
        if adapter is not None:
            from openjanus.checkpoints.lora import load_adapter

            load_adapter(pipe.model, adapter)
            pipe.name = f"{pipe.name} + {Path(adapter).name}"
        prepare_for_inference(pipe.model, quantize)
        return pipe

    @classmethod
    def _load(cls, model, device, dtype, roles, seed, check_finite) -> JanusPipeline:
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        source = resolve_model_source(model)
        if isinstance(source, str):
            if source not in _RANDOM_NOTICE_SHOWN:
                _RANDOM_NOTICE_SHOWN.add(source)
                print(f"note: {source!r} is a preset: RANDOM weights and a stand-in tokenizer, so outputs are "
                      f"noise (for tests and benchmarks); omit --model for the trained demo model",
                      file=sys.stderr)
            return cls.from_preset(source, device=dev, dtype=dt, seed=seed, roles=roles)
        net = load_model(source, device=dev, dtype=dt, check_finite=check_finite)
        processor = JanusProcessor.from_dir(source, net.cfg, roles=roles or "pro")
        cls._check_vocab(net, processor)
        # A hub model is named by its id, not by the cache's snapshot hash.
        name = model if isinstance(model, str) and parse_hub_id(model) and not Path(model).exists() else source.name
        pipe = cls(net, processor, name=name, card=ModelCard.read(source))
        pipe.source = source
        return pipe

    @classmethod
    def from_preset(cls, name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    seed: int = 0, roles: str | None = None, **overrides: object) -> JanusPipeline:
        """Random weights of a preset with a small stand-in tokenizer (no real one can be bundled)."""
        cfg = JanusConfig.from_name(name, **overrides)
        torch.manual_seed(seed)
        with torch.device(device):
            net = Janus(cfg)
        net = net.to(dtype=dtype)
        processor = standin_processor(cfg, roles=roles or "pro")
        cls._check_vocab(net, processor)
        return cls(net, processor, name=name)

    @staticmethod
    def _check_vocab(net: Janus, processor: JanusProcessor) -> None:
        if processor.tokenizer.vocab_size > net.cfg.llm.vocab_size:
            raise UserError(f"tokenizer has {processor.tokenizer.vocab_size} tokens but the model's vocabulary "
                            f"is {net.cfg.llm.vocab_size}: tokenizer and weights do not belong together")

    # --- properties -----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.llm.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.llm.embed.weight.dtype

    @property
    def fingerprint(self) -> str:
        """"fp_..." naming these weights in this format (the server's system_fingerprint)."""
        if self._fingerprint is None:
            self._fingerprint = model_card.fingerprint(self.source, self.weights, self.name)
        return self._fingerprint

    @property
    def weights(self) -> str:
        """The model and its weight format, as reports record it: "janus-shapes, bfloat16"."""
        fmt = str(self.dtype).removeprefix("torch.")
        if any(isinstance(m, Int8Linear) for m in self.model.modules()):
            fmt += ", int8 LLM and heads"
        return f"{self.name}, {fmt}"

    @property
    def image_size(self) -> int:
        return self.model.cfg.vq.image_size

    @property
    def und_image_size(self) -> int:
        return self.model.cfg.vision.image_size

    # --- requests ------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine every request of this pipeline goes through; its worker starts on first
        use. An engine closed on its own (`pipe.engine.close()`) is replaced by a new one with
        the same config; a closed pipeline has none."""
        if self._closed:
            raise UserError(f"the pipeline {self.name!r} is closed")
        if self._engine.closed:
            self._engine = Engine(self.model, self.processor, self._engine.config, self.card.defaults)
        return self._engine.start()

    def start_engine(self, config: EngineConfig) -> Engine:
        """Replace the engine by one with `config` (the old one finishes its requests first)."""
        if self._closed:
            raise UserError(f"the pipeline {self.name!r} is closed")
        self._engine.close(cancel=False)
        self._engine = Engine(self.model, self.processor, config, self.card.defaults)
        return self._engine.start()

    def close(self) -> None:
        """Cancel what is running, stop the engine's threads and free its cache; for good."""
        self._closed = True
        self._engine.close(cancel=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> JanusPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, request: ImageRequest | ChatRequest) -> RequestHandle:
        """Queue a request on the engine; iterate the handle for progress or text as it comes."""
        return self.engine.submit(request)

    def generate(self, request: ImageRequest | ChatRequest) -> ImageResult | ChatResult:
        """Run one request to the end."""
        return self.engine.submit(request).result()

    def run(self, requests: Sequence[ImageRequest | ChatRequest], progress: bool = False,
            desc: str = "generating") -> list[ImageResult | ChatResult]:
        """Submit all `requests` at once (the engine batches them) and return their results in
        order, with one progress bar over all of them."""
        handles = [self.engine.submit(r, wait=True) for r in requests]
        if progress:
            from tqdm.auto import tqdm

            total = sum(h.progress()[1] for h in handles)
            with tqdm(total=total, desc=desc, unit="tok", leave=False) as bar:
                for h in handles:  # poll four times a second while the next unfinished one runs
                    while not h.wait(0.25):
                        bar.update(sum(h.progress()[0] for h in handles) - bar.n)
                bar.update(total - bar.n)
        return [h.result() for h in handles]

    def decode_tokens(self, tokens: Tensor, grid: tuple[int, int] | None = None) -> list[Image.Image]:
        """Image tokens [P, rows * columns] -> P PIL images (`grid` (rows, columns); native when None)."""
        return decode_tokens(self.model, tokens, grid)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> image tokens [n, num_gen_tokens] (resize short side, centre crop, [-1, 1])."""
        from openjanus.images import preprocess_gen_image

        x = torch.stack([preprocess_gen_image(im, self.image_size) for im in images])
        return self.model.gen_tokenizer.encode(x.to(self.device, self.dtype))

    # --- understanding --------------------------------------------------------------------

    def answer(self, questions: Sequence[str], images: Sequence[ImageInput | Sequence[ImageInput]],
               max_new_tokens: int | None = None, **request: object) -> list[str]:
        """Single-turn questions, each about its image (a path, bytes, a PIL image, or a list of
        them), answered together: `answer(["how many objects are there?"], ["scene.png"])`. The
        question comes first, as in `ChatRequest.ask(question, images)`. What is not given
        (`max_new_tokens`, `sampling=`, ...: `ChatRequest`'s keywords) takes the model's defaults."""
        if isinstance(questions, str) or not all(isinstance(q, str) for q in questions):
            raise UserError("questions must be a list of strings and come first: answer(questions, images), "
                            "as in ChatRequest.ask(question, images)")
        if len(images) != len(questions):
            raise UserError(f"{len(questions)} questions but {len(images)} images: one image (or list of "
                            "images) per question")
        if not questions:
            raise UserError("no questions given")
        requests = [ChatRequest.ask(q, list(im) if isinstance(im, (list, tuple)) else [im],
                                    max_new_tokens=max_new_tokens, **request)
                    for im, q in zip(images, questions)]
        return [r.text for r in self.run(requests)]

