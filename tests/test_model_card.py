"""A model folder's own words and settings: generation_config.json (read as transformers reads
it) and openjanus.json (examples, vocabulary), and the demo model's copies of both."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import openjanus
from openjanus.errors import UserError
from openjanus.model_card import GENERIC_EXAMPLES, ChatDefaults, ImageDefaults, ModelCard
from openjanus.requests import SamplingParams

DEMO = ModelCard.read(Path(openjanus.__file__).parent / "assets" / "janus-shapes")


def test_the_demo_models_defaults_answer_greedily_and_sample_images():
    assert DEMO.defaults.chat == ChatDefaults(SamplingParams(temperature=0.0), max_new_tokens=64)
    assert DEMO.defaults.image == ImageDefaults(SamplingParams(temperature=1.0), guidance=5.0)


def test_the_demo_vocabulary_is_the_words_of_its_training_text():
    """Every word of the shapes world's training text (captions, questions, answers, plain text)
    is declared, and every declared word occurs there: the list is the training data's, not a guess."""
    from openjanus.shapes.datasets import make_sample

    seen: set[str] = set()
    for i in range(600):
        seen.update(re.findall(r"[a-z0-9]+", make_sample("text", 1, i).record["text"].lower()))
        for m in make_sample("und", 2, i, 64).record["conversations"]:
            seen.update(re.findall(r"[a-z0-9]+", m["content"].replace("<image_placeholder>", "").lower()))
        seen.update(re.findall(r"[a-z0-9]+", make_sample("t2i", 3, i, 64).record["caption"].lower()))
    assert seen <= DEMO.vocabulary, sorted(seen - DEMO.vocabulary)
    assert DEMO.vocabulary - seen <= {"four", "exactly"}, sorted(DEMO.vocabulary - seen)  # rare: counts of four


def test_the_demo_examples_use_only_its_words_and_others_get_a_notice():
    assert DEMO.examples.prompts and DEMO.examples.questions
    for text in DEMO.examples.prompts + DEMO.examples.questions:
        assert DEMO.unknown_words(text) == [] and DEMO.notice(text) is None, text
    assert DEMO.unknown_words("A red fox in the SNOW, a fox!") == ["fox", "snow"]
    note = DEMO.notice("a red fox in the snow")
    assert note.count("\n") == 0 and "'fox', 'snow'" in note and DEMO.examples.prompts[0] in note
    assert DEMO.examples.questions[0] in DEMO.notice("What is in this picture?", kind="question")


def test_a_folder_without_a_card_gets_the_projects_defaults_and_no_check(tmp_path):
    card = ModelCard.read(tmp_path)
    assert card.defaults.chat == ChatDefaults() and card.defaults.image == ImageDefaults()
    assert card.vocabulary is None and card.notice("a red fox in the snow") is None
    assert card.example_prompts == GENERIC_EXAMPLES.prompts and card.example_questions == GENERIC_EXAMPLES.questions


def _card(tmp_path, config: dict | str) -> ModelCard:
    (tmp_path / "generation_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return ModelCard.read(tmp_path)


def test_generation_config_reads_as_transformers_reads_it(tmp_path):
    # do_sample absent or false: greedy, whatever temperature says (transformers' rule).
    assert _card(tmp_path, {"temperature": 0.7}).defaults.chat.sampling.temperature == 0.0
    card = _card(tmp_path, {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "max_new_tokens": 100,
                            "guidance_scale": 4.5, "image": {"temperature": 0.9, "top_k": 4096}})
    assert card.defaults.chat == ChatDefaults(SamplingParams(0.7, top_k=50, top_p=0.9), max_new_tokens=100)
    assert card.defaults.image == ImageDefaults(SamplingParams(0.9, top_k=4096), guidance=4.5)
    # top_p 1 and top_k 0 mean "off", as in transformers.
    card = _card(tmp_path, {"do_sample": True, "top_p": 1.0, "top_k": 0})
    assert card.defaults.chat.sampling == SamplingParams(1.0)
    assert card.defaults.chat_sampling(top_p=0.5) == SamplingParams(1.0, top_p=0.5)
    assert card.defaults.to_dict()["image"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "guidance": 5.0}


@pytest.mark.parametrize("config, message", [
    ("{not json", "cannot read it as JSON"),
    ({"guidance_scale": -1}, "guidance_scale must be a number >= 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
    ({"do_sample": True, "temperature": "hot"}, "temperature must be a number"),
    ({"image": {"top_p": 2}}, "image.top_p must be in"),
    ({"image": 3}, "image must be an object"),
])
def test_a_bad_generation_config_is_one_line_naming_the_file(tmp_path, config, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        _card(tmp_path, config)
    assert "generation_config.json" in str(e.value) and "\n" not in str(e.value)


def test_a_bad_card_is_one_line(tmp_path):
    (tmp_path / "openjanus.json").write_text(json.dumps({"examples": {"prompts": "a red circle"}}))
    with pytest.raises(UserError, match="examples.prompts must be a list of non-empty strings"):
        ModelCard.read(tmp_path)


def test_fingerprint_names_the_weights_and_their_format(tmp_path):
    import shutil

    from openjanus.model_card import fingerprint

    demo = Path(openjanus.__file__).parent / "assets" / "janus-shapes"
    a = fingerprint(demo, "janus-shapes, float32")
    assert re.fullmatch(r"fp_[0-9a-f]{12}", a) and a == fingerprint(demo, "janus-shapes, float32")
    assert a != fingerprint(demo, "janus-shapes, bfloat16")  # the format is part of it
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    assert fingerprint(copy, "janus-shapes, float32") == a  # a copy is the same weights
    with (copy / "model.safetensors").open("r+b") as f:  # one byte of the last tensors changed
        f.seek(-5, 2)
        byte = f.read(1)
        f.seek(-5, 2)
        f.write(bytes([byte[0] ^ 1]))
    assert fingerprint(copy, "janus-shapes, float32") != a
    assert fingerprint(None, "tiny, float32", "tiny") != fingerprint(None, "small, float32", "small")


def test_requests_left_open_take_the_models_defaults_everywhere(tiny_checkpoint, tmp_path):
    """A request that leaves sampling, guidance or length open runs with the model folder's
    generation_config.json, and gives exactly what the same request with those values spelt
    out gives; the result carries the settings it ran with."""
    import shutil

    from PIL import Image

    from openjanus.inference.pipeline import JanusPipeline
    from openjanus.requests import ChatRequest, ImageRequest

    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_k": 20, "max_new_tokens": 5, "guidance_scale": 3.0,
         "image": {"temperature": 0.5}}))
    with JanusPipeline.load(str(folder), device="cpu", dtype="float32") as pipe:
        image = Image.new("RGB", (32, 32), "red")
        chat = pipe.generate(ChatRequest.ask("what is it?", [image], seed=4))
        assert chat.request.sampling == SamplingParams(0.7, top_k=20) and chat.completion_tokens <= 5
        spelt = pipe.generate(ChatRequest.ask("what is it?", [image], seed=4, max_new_tokens=5,
                                              sampling=SamplingParams(0.7, top_k=20)))
        assert spelt.token_ids == chat.token_ids
        assert pipe.answer(["what is it?"], [image], seed=4) == [chat.text]
        img = pipe.generate(ImageRequest("a red circle", seed=1))
        assert img.request.guidance == 3.0 and img.request.sampling == SamplingParams(0.5)
        assert img.tokens.equal(pipe.generate(ImageRequest("a red circle", seed=1, guidance=3.0,
                                                           sampling=SamplingParams(0.5))).tokens)


def test_negative_guidance_is_refused(capsys, tmp_path):
    from openjanus.cli import main
    from openjanus.requests import ImageRequest

    with pytest.raises(UserError, match="guidance must be >= 0"):
        ImageRequest("a red circle", guidance=-1)
    assert ImageRequest("a red circle", guidance=0).guidance == 0  # the unconditional image: allowed
    for argv in (["generate", "--out", str(tmp_path / "o"), "a red circle"],
                 ["eval", "geneval-shapes", "--out", str(tmp_path / "e")]):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--guidance", "-1"])
        assert e.value.code == 2 and "argument --guidance: must be >= 0, got -1" in capsys.readouterr().err
