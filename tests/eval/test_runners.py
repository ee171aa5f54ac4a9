"""Benchmark runners end to end with stand-in models (the real tiny model is in test_commands)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image

from openjanus.eval import formats
from openjanus.eval.runners import (
    UND_CATEGORIES,
    GenerationSettings,
    OracleResult,
    WorldOracle,
    run_geneval,
    run_geneval_shapes,
    run_mme,
    run_pope,
    run_pope_shapes,
)
from openjanus.jsonl import read_jsonl
from openjanus.shapes.spec import TAGS
from openjanus.shapes.tasks import benchmark_specs


class BlankGenerator:
    image_size = und_image_size = 32
    weights = "a stand-in pipeline, no weights"

    def __init__(self):
        self.calls = []

    def run(self, requests):
        self.calls.append([(r.prompt, r.n, r.seed) for r in requests])
        return [OracleResult([Image.new("RGB", (32, 32), (250, 250, 250)) for _ in range(r.n)]) for r in requests]


def _key(im: Image.Image) -> str:
    return hashlib.sha1(im.convert("RGB").tobytes()).hexdigest()


class TruthAnswerer:
    """Answers every question of a built shapes benchmark correctly (or always 'yes')."""

    image_size = und_image_size = 64
    weights = "a stand-in pipeline, no weights"

    def __init__(self, root: Path, always_yes: bool = False):
        self.root, self.always_yes, self.truth = root, always_yes, None

    def _load(self):
        truth = {}
        img = lambda p: _key(Image.open(p))  # noqa: E731
        for f in (self.root / "pope").glob("shapes_pope_*.json"):
            for q in formats.read_pope_questions(f):
                truth[(img(self.root / "images" / q.image), q.text)] = q.label
        for q in formats.read_mme(self.root / "mme"):
            truth[(img(q.image), q.question)] = q.answer
        for line in (self.root / "vqa.jsonl").read_text().splitlines():
            r = json.loads(line)
            truth[(img(self.root / "images" / r["image"]), r["text"])] = r["answer"]
        return truth

    def answer(self, questions, images, max_new_tokens=32, sampling=None):
        if self.always_yes:
            return ["yes"] * len(questions)
        self.truth = self.truth or self._load()
        return [self.truth[(_key(im), q)] for im, q in zip(images, questions)]


def test_geneval_shapes_with_the_truth_scores_one(tmp_path):
    specs = benchmark_specs(per_category=2, seed=0)
    report = run_geneval_shapes(WorldOracle(specs, 64), tmp_path, per_category=2,
                                settings=GenerationSettings(n_per_prompt=2, batch_size=5))
    assert report.overall == 1.0 and set(report.categories) == set(TAGS)
    assert report.by_split["heldout"].overall == 1.0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["overall"] == 1.0 and saved["images"] == 24
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(r["correct"] for r in rows)
    html = (tmp_path / "index.html").read_text()
    assert "00000/samples/0000.png" in html and specs[0].prompt in html


def test_geneval_shapes_with_blank_images_scores_zero(tmp_path):
    gen = BlankGenerator()
    report = run_geneval_shapes(gen, tmp_path, per_category=1, settings=GenerationSettings(n_per_prompt=3, seed=5,
                                                                                           batch_size=4))
    assert report.overall == 0.0
    assert [len(c) for c in gen.calls] == [4, len(TAGS) - 4]  # batch_size prompts go to the engine together
    assert [seed for c in gen.calls for _, _, seed in c] == list(range(5, 5 + len(TAGS)))  # one seed per prompt
    assert len(list(tmp_path.glob("*/samples/*.png"))) == 3 * len(TAGS)


def test_real_geneval_metadata_is_generated_in_its_layout(tmp_path):
    meta = tmp_path / "evaluation_metadata.jsonl"
    recs = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench",
             "extra": 1},
            {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "pink"}],
             "prompt": "a photo of a pink car"}]
    meta.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    report = run_geneval(BlankGenerator(), formats.read_geneval_metadata(meta), out,
                         GenerationSettings(n_per_prompt=2), records=read_jsonl(meta))
    assert report.scored is False and report.overall is None
    assert json.loads((out / "00000" / "metadata.jsonl").read_text()) == recs[0]  # extra keys kept
    assert sorted(p.name for p in (out / "00001" / "samples").iterdir()) == ["0000.png", "0001.png"]


def test_pope_shapes_perfect_and_always_yes(tmp_path):
    good = run_pope_shapes(TruthAnswerer(tmp_path / "a"), tmp_path / "a", n_images=8, seed=1, batch_size=5)
    assert set(good.categories) <= set(UND_CATEGORIES) and {"pope_random", "count", "describe"} <= set(good.categories)
    assert good.overall == 1.0 and good.yes_no_by_split == {"train": 1.0, "heldout": 1.0}
    assert good.vqa_by_split["heldout"]["count"] == 1.0
    for setting in ("random", "popular", "adversarial"):
        assert good.pope[setting].f1 == 1.0
    assert all(c["acc_plus"] == 1.0 for c in good.mme["categories"].values())
    saved = json.loads((tmp_path / "a" / "report.json").read_text())
    assert saved == json.loads(json.dumps(good.to_dict()))  # report.json is the typed report
    assert (tmp_path / "a" / "index.html").is_file()
    yes = run_pope_shapes(TruthAnswerer(tmp_path / "b", always_yes=True), tmp_path / "b", n_images=8, seed=1)
    for setting in ("random", "popular", "adversarial"):
        m = yes.pope[setting]
        assert m.yes_ratio == 1.0 and m.accuracy == 0.5 and m.recall == 1.0
    assert all(c["acc_plus"] == 0.0 for c in yes.mme["categories"].values())


def test_real_pope_and_mme_files(tmp_path):
    imgs = tmp_path / "val2014"
    imgs.mkdir()
    Image.new("RGB", (20, 20), (255, 0, 0)).save(imgs / "COCO_1.jpg")
    qfile = tmp_path / "coco_pope_random.json"
    qs = [{"question_id": i, "image": "COCO_1.jpg", "text": t, "label": label}
          for i, (t, label) in enumerate([("Is there a dog in the image?", "yes"), ("Is there a cat in the image?",
                                                                                    "no")])]
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))

    class Says:
        image_size = und_image_size = 32
        weights = "a stand-in pipeline, no weights"

        def answer(self, questions, images, max_new_tokens=32, sampling=None):
            return ["Yes, there is." if "dog" in q else "No, there is not." for q in questions]

    m = run_pope(Says(), qfile, imgs, tmp_path / "out")
    assert m.accuracy == 1.0 and m.n == 2
    ans = [json.loads(line) for line in (tmp_path / "out" / "coco_pope_random.answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in ans] == [0, 1] and ans[1]["pred"] == "no"

    formats.write_mme_category(tmp_path / "mme", "existence",
                               [(Image.new("RGB", (8, 8)), "x", [("Is there a dog?", "Yes"), ("Is there a cat?",
                                                                                              "No")])])
    mm = run_mme(Says(), tmp_path / "mme", tmp_path / "mme_out")
    assert mm["categories"]["existence"]["acc_plus"] == 1.0
    assert (tmp_path / "mme_out" / "results" / "existence.txt").read_text().count("\n") == 2


def test_benchmark_answers_are_greedy_whatever_the_model_prefers():
    """A model whose generation_config.json samples its chat answers is still scored on greedy
    answers: every model is evaluated the same way."""
    from openjanus.eval.runners import BENCHMARK_ANSWERS, _answer_all

    seen = []

    class Sampler:
        def answer(self, questions, images, max_new_tokens=32, sampling=None):
            seen.append(sampling)
            return ["yes"] * len(questions)

    assert _answer_all(Sampler(), [None] * 3, ["q"] * 3, 2, 8, lambda msg: None, "test") == ["yes"] * 3
    assert seen == [BENCHMARK_ANSWERS] * 2 and BENCHMARK_ANSWERS.temperature == 0
