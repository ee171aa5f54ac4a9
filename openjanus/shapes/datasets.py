"""The shapes world as training data: streamed sample by sample, exported in shards.

Three kinds, each a pure function of ``(seed, split, index)`` so any slice can be made without
the ones before it (shards can be built in parallel, resumed, or regenerated identically):

* ``t2i`` -- an image and one caption (a GenEval-category phrasing, the summary or the dense
  description), with the category it came from.
* ``und`` -- an image and a conversation of 1..4 question/answer turns, in Janus's
  convention: the first user turn starts with ``<image_placeholder>``.
* ``text`` -- text only: captions, descriptions and question-answer lines, for training a
  tokenizer or the language model on the world's vocabulary.

On disk (:func:`export_dataset`)::

    out/manifest.json                 kind, counts, seed, split, image size, shard list
    out/shard-00000.jsonl             one JSON record per line
    out/shard-00000/000000000.png     the images of that shard, named by global index

A shard is written to temporary names and renamed when complete, so an interrupted export
resumes where it stopped; nothing but the current sample is ever held in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from PIL import Image

from openjanus.errors import UserError
from openjanus.processing import IMAGE_TOKEN  # the placeholder the chat template expands
from openjanus.shapes.splits import HELDOUT_VERSION
from openjanus.shapes.tasks import SPLIT_CHOICES, sample_scene_in_split, sample_t2i_scene
from openjanus.shapes.text import (
    PREFIXES,
    caption_variants,
    describe,
    scene_questions,
    summary,
)
from openjanus.shapes.world import BACKGROUND_KINDS, check_image_size, render, rng_for, with_background

KINDS: tuple[str, ...] = ("t2i", "und", "text")
_STREAM = {"t2i": 1, "und": 2, "text": 3}
_SPLIT_STREAM = {"train": 0, "heldout": 1, "any": 2}


@dataclass(frozen=True)
class Sample:
    """One sample: an image (None for text) and its JSON record (without the image path)."""

    image: Image.Image | None
    record: dict[str, Any]


def t2i_sample(
    seed: int, index: int, image_size: int = 64, split: str = "train", background: str | None = None
) -> Sample:
    """Image + caption. 70% of captions phrase the scene's GenEval category (any prefix and
    word order), 15% the summary ('two red circles and a star'), 15% the dense description.
    ``background`` renders every scene on that background kind (captions never mention it)."""
    rng = rng_for(seed, _STREAM["t2i"], _SPLIT_STREAM[split], index)
    tag, spec, scene = sample_t2i_scene(rng, split, image_size)
    u = rng.random()
    if spec is not None and u < 0.7:
        options = caption_variants(spec)
        caption = options[int(rng.integers(len(options)))]
    elif u < 0.85:
        caption = PREFIXES[int(rng.integers(len(PREFIXES)))] + summary(scene)
    else:
        caption = describe(scene)
    record = {"caption": caption, "category": tag, "prompt": spec.prompt if spec else None}
    return Sample(render(with_background(scene, background)), record)


def und_sample(
    seed: int, index: int, image_size: int = 64, split: str = "train", max_turns: int = 4,
    background: str | None = None,
) -> Sample:
    """Image + a conversation of 1..``max_turns`` distinct questions about it, answers exact."""
    rng = rng_for(seed, _STREAM["und"], _SPLIT_STREAM[split], index)
    scene = sample_scene_in_split(rng, split, image_size)
    qas = scene_questions(scene, rng)
    k = int(rng.integers(1, max_turns + 1))
    chosen = [qas[i] for i in rng.choice(len(qas), size=min(k, len(qas)), replace=False)]
    conv = []
    for t, qa in enumerate(chosen):
        conv.append({"role": "user", "content": (IMAGE_TOKEN + "\n" if t == 0 else "") + qa.question})
        conv.append({"role": "assistant", "content": qa.answer})
    record = {"conversations": conv, "kinds": [qa.kind for qa in chosen]}
    return Sample(render(with_background(scene, background)), record)


def text_sample(seed: int, index: int, split: str = "train") -> Sample:
    """One line of world text: a caption, a description, or 'question answer'."""
    rng = rng_for(seed, _STREAM["text"], _SPLIT_STREAM[split], index)
    u = rng.random()
    if u < 0.5:
        tag, spec, scene = sample_t2i_scene(rng, split, 64)
        if spec is not None and u < 0.35:
            options = caption_variants(spec)
            text = options[int(rng.integers(len(options)))]
        else:
            text = describe(scene) if rng.random() < 0.5 else summary(scene)
    else:
        scene = sample_scene_in_split(rng, split, 64)
        qas = scene_questions(scene, rng)
        qa = qas[int(rng.integers(len(qas)))]
        text = f"{qa.question} {qa.answer}"
    return Sample(None, {"text": text})


def make_sample(
    kind: str, seed: int, index: int, image_size: int = 64, split: str = "train", background: str | None = None
) -> Sample:
    """Sample ``index`` of a dataset kind (``background``: one background kind for every image)."""
    if kind == "t2i":
        return t2i_sample(seed, index, image_size, split, background)
    if kind == "und":
        return und_sample(seed, index, image_size, split, background=background)
    if kind == "text":
        return text_sample(seed, index, split)
    raise UserError(f"unknown dataset kind {kind!r}; kinds are {', '.join(KINDS)}")


def iter_samples(
    kind: str, start: int = 0, stop: int | None = None, seed: int = 0, image_size: int = 64, split: str = "train"
) -> Iterator[Sample]:
    """Stream samples ``start..stop`` (forever if stop is None) without keeping any of them."""
    i = start
    while stop is None or i < stop:
        yield make_sample(kind, seed, i, image_size, split)
        i += 1


# --------------------------------------------------------------------------------------------
# Export


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _write_shard(args: tuple[str, str, int, int, int, int, int, str, str | None]) -> tuple[int, int]:
    """Write shard k (samples lo..hi) unless it is already complete; returns (k, samples)."""
    out_s, kind, k, lo, hi, seed, image_size, split, background = args
    out = Path(out_s)
    final = out / f"{_shard_name(k)}.jsonl"
    if final.exists():
        return k, hi - lo
    img_dir = out / _shard_name(k)
    if kind != "text":
        img_dir.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{_shard_name(k)}.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for i in range(lo, hi):
            s = make_sample(kind, seed, i, image_size, split, background)
            rec: dict[str, Any] = {"id": f"{kind}-{i:09d}"}
            if s.image is not None:
                rel = f"{_shard_name(k)}/{i:09d}.png"
                s.image.save(out / rel)
                rec["image"] = rel
            rec.update(s.record)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, final)
    return k, hi - lo


def export_dataset(
    out: str | Path,
    kind: str,
    n: int,
    shard_size: int = 10_000,
    image_size: int = 64,
    seed: int = 0,
    split: str = "train",
    workers: int = 1,
    background: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Write ``n`` samples of a kind in shards of ``shard_size``; returns (and writes) the manifest.

    ``workers > 1`` builds shards in parallel processes. Shards already complete are kept.
    ``background`` puts every image on one background kind (default: all kinds, at random).
    """
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; kinds are {', '.join(KINDS)}")
    if split not in SPLIT_CHOICES:
        raise UserError(f"unknown split {split!r}; splits are {', '.join(SPLIT_CHOICES)}")
    if n < 1 or shard_size < 1 or workers < 1:
        raise UserError(f"samples, shard size and workers must be >= 1 (got {n}, {shard_size}, {workers})")
    if background is not None and background not in BACKGROUND_KINDS:
        raise UserError(f"unknown background {background!r}; kinds are {', '.join(BACKGROUND_KINDS)}")
    try:
        check_image_size(image_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(out), kind, k, lo, min(lo + shard_size, n), seed, image_size, split, background)
        for k, lo in enumerate(range(0, n, shard_size))
    ]
    done = 0
    if workers == 1:
        results = map(_write_shard, jobs)
        for k, m in results:
            done += m
            log(f"shard {k + 1}/{len(jobs)} done ({done}/{n} samples)")
    else:
        # spawn, not fork: the caller may hold threads (torch) that fork would copy half-alive.
        with get_context("spawn").Pool(workers) as pool:
            for k, m in pool.imap_unordered(_write_shard, jobs):
                done += m
                log(f"shard {k + 1}/{len(jobs)} done ({done}/{n} samples)")
    manifest = {
        "format": "openjanus-shapes",
        "kind": kind,
        "samples": n,
        "shard_size": shard_size,
        "shards": [f"{_shard_name(j[2])}.jsonl" for j in jobs],
        "seed": seed,
        "split": split,
        "image_size": image_size if kind != "text" else None,
        "background": background if kind != "text" else None,
        "heldout_version": HELDOUT_VERSION,
        "image_token": IMAGE_TOKEN if kind == "und" else None,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_dataset(root: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the records of an exported dataset, shard by shard (image paths made absolute)."""
    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{root}: no manifest.json (not an exported dataset)") from None
    for shard in manifest["shards"]:
        with (root / shard).open(encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if "image" in rec:
                    rec["image"] = str(root / rec["image"])
                yield rec
