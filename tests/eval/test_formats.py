"""GenEval, POPE and MME files: read, written and scored as the official tools do."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from openjanus.errors import UserError
from openjanus.eval import formats
from openjanus.eval.formats import MMEQuestion
from openjanus.shapes.text import pope_label

GENEVAL_LINES = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
     "prompt": "a photo of two clocks"},
    {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                    {"class": "dog", "count": 1, "position": ["right of", 0]}],
     "prompt": "a photo of a dog right of a teddy bear"},
    {"tag": "color_attr", "include": [{"class": "train", "count": 1, "color": "purple"},
                                      {"class": "tv", "count": 1, "color": "red"}],
     "prompt": "a photo of a purple train and a red tv"},
]


def test_geneval_metadata_round_trip(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_LINES))
    specs = formats.read_geneval_metadata(path)
    assert [s.tag for s in specs] == ["single_object", "counting", "position", "color_attr"]
    assert specs[2].include[1].position == ("right of", 0)
    assert [s.to_geneval() for s in specs] == GENEVAL_LINES


@pytest.mark.parametrize("bad, message", [
    ('{"tag": "x", "prompt": "p"}', "missing 'include'"),
    ('{"tag": "x", "include": [{"count": 1}], "prompt": "p"}', "'class'"),
    ('{"tag": "x", "include": [{"class": "a", "position": ["near", 0]}], "prompt": "p"}', "unknown relation"),
    ('not json', "not valid JSON"),
])
def test_geneval_metadata_errors_name_the_line(tmp_path, bad, message):
    path = tmp_path / "m.jsonl"
    path.write_text(bad + "\n")
    with pytest.raises(UserError, match=message):
        formats.read_geneval_metadata(path)


def test_geneval_layout(tmp_path):
    images = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(3)]
    paths = formats.write_geneval_prompt(tmp_path, 7, GENEVAL_LINES[1], images)
    folder = tmp_path / "00007"
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "00007/samples/0000.png", "00007/samples/0001.png", "00007/samples/0002.png"]
    # GenEval's evaluate_images.py json.load()s this file: one object, exactly the record.
    assert json.loads((folder / "metadata.jsonl").read_text()) == GENEVAL_LINES[1]
    assert (folder / "grid.png").is_file()
    entries = formats.read_geneval_samples(tmp_path)
    assert [e.index for e in entries] == [7] and len(entries[0].samples) == 3


def test_geneval_summary_is_mean_of_tag_means():
    rows = [{"tag": "a", "correct": True}, {"tag": "a", "correct": False}, {"tag": "b", "correct": True}]
    s = formats.geneval_summary(rows)
    assert s["categories"] == {"a": 0.5, "b": 1.0} and s["overall"] == 0.75


def test_pope_label_reads_answers_like_pope():
    assert pope_label("Yes, there is a dog.") == "yes"
    assert pope_label("No, there is not.") == "no"
    assert pope_label("There is not a dog") == "no"
    assert pope_label("I see a dog. No cat.") == "yes"  # only the first sentence counts
    assert pope_label("") == "yes"


def test_pope_metrics_by_hand():
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "yes"]
    preds = ["yes", "no", "yes", "yes", "no", "no", "yes", "yes"]
    # tp=3 (0,2,7), fn=1 (1), fp=2 (3,6), tn=2 (4,5)
    m = formats.pope_metrics(preds, labels)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 2, 2)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert m["yes_ratio"] == pytest.approx(5 / 8)


def test_pope_question_file(tmp_path):
    path = tmp_path / "coco_pope_random.json"
    rows = [{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"},
            {"question_id": 2, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "No"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qs = formats.read_pope_questions(path)
    assert [q.label for q in qs] == ["yes", "no"] and qs[0].image == "a.jpg"
    path.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "x"}) + "\n")
    with pytest.raises(UserError, match="missing label"):
        formats.read_pope_questions(path)


def _q(cat, img, ans):
    return MMEQuestion(cat, tmp_img(img), f"q {ans}", ans)


def tmp_img(name):
    from pathlib import Path

    return Path("/nowhere") / name


def test_mme_acc_and_acc_plus_by_hand():
    rows = [
        (_q("count", "1.png", "Yes"), "Yes"), (_q("count", "1.png", "No"), "No"),     # both right
        (_q("count", "2.png", "Yes"), "Yes"), (_q("count", "2.png", "No"), "Yes"),    # one right
        (_q("count", "3.png", "Yes"), "no"), (_q("count", "3.png", "No"), "maybe"),   # none ('other')
        (_q("color", "4.png", "Yes"), "yes."), (_q("color", "4.png", "No"), "No, it is red"),
    ]
    m = formats.mme_metrics(rows)
    assert m["categories"]["count"]["acc"] == pytest.approx(3 / 6)
    assert m["categories"]["count"]["acc_plus"] == pytest.approx(1 / 3)
    assert m["categories"]["count"]["score"] == pytest.approx(100 * (0.5 + 1 / 3))
    assert m["categories"]["color"]["acc"] == 1.0 and m["categories"]["color"]["acc_plus"] == 1.0
    assert m["perception"] == pytest.approx(m["categories"]["count"]["score"] + 200)
    assert formats.mme_prediction("Yes") == "yes" and formats.mme_prediction("no!") == "no"
    assert formats.mme_prediction("I think so") == "other"


def test_mme_folders_both_layouts_and_result_files(tmp_path):
    img = Image.new("RGB", (16, 16))
    formats.write_mme_category(tmp_path, "existence", [(img, "a", [("Is there a cat?", "Yes"), ("Is there a dog?",
                                                                                                "No")])])
    art = tmp_path / "artwork"
    (art / "images").mkdir(parents=True)
    (art / "questions_answers_YN").mkdir()
    img.save(art / "images" / "b.jpg")
    (art / "questions_answers_YN" / "b.txt").write_text("Is it old?\tYes\nIs it new?\tNo\n")
    qs = formats.read_mme(tmp_path)
    assert [(q.category, q.image.name, q.answer) for q in qs] == [
        ("artwork", "b.jpg", "Yes"), ("artwork", "b.jpg", "No"), ("existence", "a.png", "Yes"), ("existence", "a.png",
                                                                                                 "No")]
    paths = formats.write_mme_results(tmp_path / "res", [(q, "Yes\tsure\n") for q in qs])
    lines = (tmp_path / "res" / "existence.txt").read_text().splitlines()
    assert lines[0].split("\t") == ["a.png", "Is there a cat?", "Yes", "Yes sure"]
    assert len(paths) == 2
