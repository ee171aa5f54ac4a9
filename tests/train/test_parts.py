"""Pretraining the parts with the same loop: VQ tokenizer, SigLIP encoder, text LM; part files
and their assembly into a Janus model; the part data stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from openjanus.checkpoints.weights import load_part_into
from openjanus.config import ConfigError, JanusConfig, VQConfig
from openjanus.errors import UserError
from openjanus.model.janus import Janus
from openjanus.model.llm import LLM
from openjanus.model.vq import VQModel
from openjanus.processing import standin_processor
from openjanus.train.batch import IGNORE, PackedBatch
from openjanus.train.checkpoint import export_checkpoint, latest_checkpoint
from openjanus.train.image_data import PartDataStream
from openjanus.train.objectives import TextObjective
from openjanus.train.siglip import CaptionBatch, SigLIPObjective, SigLIPPair
from openjanus.train.stages import stage_from_name
from openjanus.train.trainer import LoopSettings, Trainer, apply_stage
from openjanus.train.vq_objective import VQObjective

CFG = JanusConfig.from_name("tiny")
# Smaller than the tiny preset's VQ: the objective and the loop are under test, not the size.
SMALL_VQ = VQConfig(image_size=16, codebook_size=32, codebook_dim=8, base_channels=16, channel_mult=(1, 2),
                    z_channels=16, num_res_blocks=1, norm_groups=8)


def _loss(obj, batch) -> float:
    with torch.no_grad():
        return obj(batch, loss_denominator=float(obj.count(batch))).loss.item()


def _train(obj, batch, steps: int = 12, lr: float = 3e-3, **settings) -> Trainer:
    stage = stage_from_name(obj.task, steps=steps, warmup_steps=0, lr=lr, schedule="constant")
    apply_stage(obj, stage)
    trainer = Trainer(obj, stage, iter([batch] * steps), LoopSettings(**settings), log=lambda line: None)
    trainer.fit()
    return trainer


def _text_batch(rows: int = 2, seq_len: int = 24) -> PackedBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, CFG.llm.vocab_size, (rows, seq_len), generator=g)
    doc = (torch.arange(seq_len) >= seq_len // 2).long().expand(rows, -1).clone()  # two documents per row
    pos = torch.arange(seq_len) - doc[0] * (seq_len // 2)
    targets = torch.cat([ids[:, 1:], torch.full((rows, 1), IGNORE)], 1)
    targets[:, seq_len // 2 - 1] = IGNORE  # no target across the document boundary
    false = torch.zeros(rows, seq_len, dtype=torch.bool)
    return PackedBatch(input_ids=ids, positions=pos.expand(rows, -1).clone(), doc_ids=doc, und_mask=false,
                       pixel_values=torch.zeros(0, 3, 32, 32), gen_mask=false, gen_codes=torch.zeros_like(ids),
                       text_targets=targets, image_targets=torch.full_like(ids, IGNORE),
                       task=torch.ones_like(ids))


def _images(n: int = 4, size: int = SMALL_VQ.image_size) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # Smooth random images (a few low-frequency blobs) in [-1, 1]: learnable by a tiny VQ.
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)


def test_text_pretraining_reduces_loss() -> None:
    torch.manual_seed(0)
    obj = TextObjective(LLM(CFG.llm))
    batch = _text_batch()
    before = _loss(obj, batch)
    _train(obj, batch)
    assert _loss(obj, batch) < 0.8 * before


def test_vq_pretraining_reduces_loss_and_logs_usage_and_psnr() -> None:
    torch.manual_seed(0)
    obj = VQObjective(VQModel(SMALL_VQ))
    images = _images()
    before = _loss(obj, images)
    trainer = _train(obj, images, lr=2e-3)
    assert _loss(obj, images) < 0.8 * before
    step = trainer.train_step  # one more step to read its metrics
    trainer.stage = stage_from_name("vq", steps=100, warmup_steps=0)
    trainer._iter = iter([images])
    metrics = step().metrics
    assert {"vq/recon", "vq/codebook", "vq/commitment", "vq/psnr"} <= set(metrics)
    assert metrics["vq/psnr"][0] / metrics["vq/psnr"][1] > 5.0
    usage = obj.log_metrics()["vq/codebook_usage"]
    assert 0 < usage <= 1  # ids recorded in training mode by the quantizer's rolling window


def test_vq_dead_code_restart_moves_unused_codes_onto_latents() -> None:
    torch.manual_seed(0)
    model = VQModel(SMALL_VQ)
    obj = VQObjective(model, restart_every=2)
    images = _images()
    with torch.no_grad():
        used = set(model.encode(images).flatten().tolist())
    dead = sorted(set(range(SMALL_VQ.codebook_size)) - used)
    assert dead  # a random init leaves most of a 32-code book unused on one batch
    before = model.quantize.embedding.weight.detach().clone()
    obj(images, loss_denominator=1.0)
    obj(images, loss_denominator=1.0)  # window of 2 complete: restart scheduled, not yet applied
    torch.testing.assert_close(model.quantize.embedding.weight, before, rtol=0, atol=0)
    obj(images, loss_denominator=1.0)  # applied before this forward
    after = model.quantize.embedding.weight.detach()
    assert obj.restarts == len(dead)
    moved = (after - before).abs().sum(dim=1) > 0
    assert moved.nonzero().flatten().tolist() == dead
    # The new rows are unit latents of the batch (plus 1% noise): each is close to some latent.
    with torch.no_grad():
        lat = torch.nn.functional.normalize(model.encode_latents(images).permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
    best = (after[dead] @ lat.t()).max(dim=1).values
    assert bool((best > 0.99).all()), best.min()
    assert obj.log_metrics()["vq/restarted_codes"] == len(dead)


def test_vq_restart_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match="restart_every"):
        VQObjective(VQModel(SMALL_VQ), restart_every=-1)


def test_siglip_pretraining_reduces_loss() -> None:
    torch.manual_seed(0)
    proc = standin_processor(CFG)
    pair = SigLIPPair(CFG.vision, vocab_size=proc.tokenizer.vocab_size, text_layers=1, caption_len=8)
    assert pair.log_t.item() == pytest.approx(np.log(10.0)) and pair.bias.item() == -10.0
    obj = SigLIPObjective(pair)
    g = torch.Generator().manual_seed(1)
    n = 6
    ids = torch.randint(1, proc.tokenizer.vocab_size, (n, 8), generator=g)
    valid = torch.ones(n, 8, dtype=torch.bool)
    valid[:, 6:] = False
    batch = CaptionBatch(torch.randn(n, 3, 32, 32, generator=g), ids, valid)
    before = _loss(obj, batch)
    _train(obj, batch, steps=15)
    assert _loss(obj, batch) < 0.5 * before
    # The caption tower reads only valid tokens: padding ids do not change the embedding.
    other = ids.clone()
    other[:, 6:] = 3
    with torch.no_grad():
        torch.testing.assert_close(pair.embed_captions(ids, valid), pair.embed_captions(other, valid))


def test_part_exports_assemble_into_janus(tmp_path) -> None:
    torch.manual_seed(0)
    obj = TextObjective(LLM(CFG.llm))
    trainer = _train(obj, _text_batch(), steps=2, output_dir=tmp_path / "text")
    trainer.settings.meta.update(task="text", model_config=CFG.to_dict())
    trainer.save()
    # The part task's training checkpoint carries task and model config, so it exports alone.
    ckpt = latest_checkpoint(tmp_path / "text")
    out, notes = export_checkpoint(ckpt, tmp_path / "llm-part")
    assert json.loads((out / "part.json").read_text())["part"] == "llm" and notes

    model = Janus(CFG)
    load_part_into(model, "llm", out)
    for k, v in obj.model.state_dict().items():
        assert torch.equal(model.llm.state_dict()[k], v), k
    load_part_into(model, "llm", ckpt)  # a training checkpoint works as a part source too
    with pytest.raises(UserError, match="holds the 'llm' part"):
        load_part_into(model, "vq", out)
    other = Janus(JanusConfig.from_name("tiny", **{"llm.n_layers": 3}))
    with pytest.raises(UserError, match="n_layers"):
        load_part_into(other, "llm", out)


def _write_images(folder, n: int) -> list[dict[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
        recs.append({"image": f"imgs/{i}.png", "caption": f"a picture number {i}"})
    return recs


def test_part_data_stream_resumes_and_skips_bad_records(tmp_path) -> None:
    recs = _write_images(tmp_path / "imgs", 5)
    recs.append({"image": "imgs/missing.png", "caption": "gone"})
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in recs))
    proc = standin_processor(CFG)

    def stream() -> PartDataStream:
        return PartDataStream("siglip", str(manifest), rows=2, image_size=32, seed=3, tokenizer=proc.tokenizer,
                              caption_len=8, image_config=proc.image_config)

    a = stream()
    first = next(a)
    assert first.pixel_values.shape == (2, 3, 32, 32) and first.caption_ids.shape == (2, 8)
    state = a.state_dict()
    rest = [next(a) for _ in range(4)]
    assert a.stats()["data/bad_records"] >= 1
    b = stream()
    b.load_state_dict(state)
    for x, y in zip(rest, [next(b) for _ in range(4)]):
        assert torch.equal(x.pixel_values, y.pixel_values) and torch.equal(x.caption_ids, y.caption_ids)

    folder = PartDataStream("siglip", str(tmp_path), rows=2, image_size=32, tokenizer=proc.tokenizer,
                            caption_len=8, image_config=proc.image_config)  # a folder of manifests
    assert len(folder.records) == 6  # the missing image is found out (and counted) only when read
    vq = PartDataStream("vq", str(tmp_path / "imgs"), rows=3, image_size=32)
    images = next(vq)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    shapes = PartDataStream("siglip", "shapes", rows=2, image_size=32, tokenizer=proc.tokenizer, caption_len=16,
                            image_config=proc.image_config)
    assert next(shapes).caption_mask.sum() > 4


def test_part_manifests_resolve_images_and_name_bad_records(tmp_path) -> None:
    absolute = str(tmp_path / "elsewhere" / "a.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "m.jsonl").write_text(f'{{"image": "imgs/0.png"}}\n\n{{"image": {json.dumps(absolute)}}}\n')
    (sub / "empty.jsonl").write_text("")  # an empty shard adds nothing
    stream = PartDataStream("vq", str(sub), rows=1, image_size=16)
    assert [r["image"] for r in stream.records] == [str(sub / "imgs" / "0.png"), absolute]

    (sub / "m.jsonl").write_text('{"image": "0.png"}\n\n{"caption": "no image"}\n')
    with pytest.raises(UserError, match=r"m\.jsonl record 2: each record needs an 'image' field"):
        PartDataStream("vq", str(sub), rows=1, image_size=16)
    (sub / "m.jsonl").write_text('{"image": "0.png"}\n\n{"image": \n')
    with pytest.raises(UserError, match=r"m\.jsonl:3: not valid JSON"):
        PartDataStream("vq", str(sub), rows=1, image_size=16)
    (sub / "m.jsonl").write_text("")
    with pytest.raises(UserError, match="0 usable records"):
        PartDataStream("vq", str(sub), rows=1, image_size=16)


def test_siglip_shape_groups_are_hard_negatives_that_resume(tmp_path) -> None:
    from openjanus.shapes.text import describe
    from openjanus.train.config import PartOptions

    proc = standin_processor(CFG)

    def stream(rows: int = 6) -> PartDataStream:
        return PartDataStream("siglip", "shapes", rows=rows, image_size=32, seed=4, tokenizer=proc.tokenizer,
                              caption_len=32, image_config=proc.image_config, shape_groups=3)

    a = stream()
    scenes = [a._group_member(i) for i in range(6)]
    for g in (scenes[:3], scenes[3:]):  # two groups of three: same layout and colours, other shapes
        assert len({tuple((o.color, o.center, o.size) for o in s.objects) for s in g}) == 1
        assert len({describe(s) for s in g}) == 3
    assert [o.color for o in scenes[0].objects] != [o.color for o in scenes[3].objects] or \
        [o.center for o in scenes[0].objects] != [o.center for o in scenes[3].objects]
    first = next(a)
    assert first.pixel_values.shape == (6, 3, 32, 32)
    state = a.state_dict()
    rest = [next(a) for _ in range(2)]
    b = stream()
    b.load_state_dict(state)
    for x, y in zip(rest, [next(b) for _ in range(2)]):
        assert torch.equal(x.pixel_values, y.pixel_values) and torch.equal(x.caption_ids, y.caption_ids)

    with pytest.raises(UserError, match="multiple of parts.siglip_shape_groups"):
        stream(rows=4)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "x.png", "caption": "a circle"}) + "\n")
    with pytest.raises(UserError, match="data.source 'shapes'"):
        PartDataStream("siglip", str(manifest), rows=3, image_size=32, tokenizer=proc.tokenizer,
                       caption_len=8, image_config=proc.image_config, shape_groups=3)
    with pytest.raises(UserError, match="siglip task"):  # a VQ run does not drop the option silently
        PartDataStream("vq", "shapes", rows=3, image_size=32, shape_groups=3)
    with pytest.raises(ConfigError, match="siglip_shape_groups"):
        PartOptions(siglip_shape_groups=7).validate()
    with pytest.raises(ConfigError, match="siglip_shape_groups"):
        PartOptions(siglip_shape_groups=1).validate()
