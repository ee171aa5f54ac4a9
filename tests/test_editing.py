"""Image-conditioned requests through the engine (edits, outpainting, other sizes): known tokens
come back exactly; a request's tokens depend only on the request (alone, in any mix, whatever
the batch rows); a canvas decoded wave by wave equals its windows run one by one; everything
regenerated at the native size is a plain request; bad input is one clear UserError.

Comparisons are exact, as in test_engine.py (CPU, fp32)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from openjanus.canvas import CanvasTokens, Geometry, image_to_pixels, prepare_canvas
from openjanus.errors import UserError
from openjanus.inference.engine import EngineConfig, run_jobs
from openjanus.inference.runner import BatchRunner, Job, image_job
from openjanus.inference.windows import window_seed
from openjanus.requests import ChatRequest, ImageProgress, ImageRequest, SamplingParams

GREEDY = SamplingParams(temperature=0.0)


def photo(size=(32, 32), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def lower_half(grid=8) -> torch.Tensor:
    m = torch.zeros(grid, grid, dtype=torch.bool)
    m[grid // 2:] = True
    return m


def source_tokens(pipe, image) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.model.gen_tokenizer.encode(image_to_pixels(image)[None]).cpu()


def edit_requests():
    box = torch.zeros(8, 8, dtype=torch.bool)
    box[2:5, 3:7] = True
    return [ImageRequest("a red circle", n=2, seed=1, image=photo(), mask=lower_half()),
            ImageRequest("a blue square", n=1, seed=2, image=photo(seed=1), mask=box,
                         sampling=SamplingParams(0.8, top_k=20)),
            ImageRequest("a star", n=1, seed=3, size=(64, 32)),
            ImageRequest("a green star", n=2, seed=4, image=photo((40, 30), seed=2), region=(0, 0, 20, 30)),
            ImageRequest("two squares", n=1, seed=5, image=photo(seed=3), outpaint={"right": 16}, jacobi=3,
                         sampling=GREEDY),
            ImageRequest("a red square", n=2, seed=6, image=photo(seed=4), mask=lower_half(), jacobi=4,
                         jacobi_branches=3)]


def test_branched_edits_give_one_rows_tokens(pipe):
    """Branches on an edit (known tokens) and an outpainting: Gumbel gives one row's tokens."""
    for extra in ({"mask": lower_half()}, {"outpaint": {"right": 16}}):
        request = ImageRequest("a red square", n=2, seed=6, image=photo(seed=4), jacobi=4, jacobi_branches=3, **extra)
        one = pipe.generate(dataclasses.replace(request, jacobi_branches=1))
        assert torch.equal(pipe.generate(request).tokens, one.tokens)


def test_known_tokens_come_back_exactly(pipe):
    image = photo()
    result = pipe.generate(ImageRequest("a red circle", n=3, seed=1, image=image, mask=lower_half()))
    assert torch.equal(result.tokens[:, :32], source_tokens(pipe, image)[:, :32].expand(3, -1))
    assert result.images[0].size == (32, 32) and result.grid is None
    assert result.cost.forward_passes == 32  # prefill with the known upper half, then 31 steps


def test_edits_give_the_same_tokens_alone_and_in_any_mix(pipe):
    requests = [*edit_requests(), ImageRequest("a red circle", n=2, seed=1),
                ChatRequest.ask("what is this?", [photo()], max_new_tokens=5)]

    def out(results):
        return [r.tokens.tolist() if hasattr(r, "tokens") else r.token_ids for r in results]

    alone = out([pipe.generate(r) for r in requests])
    assert out(pipe.run(requests)) == alone
    order = [6, 4, 0, 5, 2, 1, 3]
    assert out(pipe.run([requests[i] for i in order])) == [alone[i] for i in order]
    # One image at a time: chunks and stages queue behind each other (chunks of a request share
    # its stream, so as for plain requests the tokens follow the engine's row count, not its load).
    small = pipe.start_engine(EngineConfig(rows=2))
    try:
        one_by_one = out([small.submit(r).result() for r in requests[:5]])
        handles = [small.submit(r) for r in requests[:5]]
        assert out([h.result() for h in handles]) == one_by_one
        for i in (1, 2, 4):  # one image per request, or one per job: no chunking
            assert one_by_one[i] == alone[i]
    finally:
        small.close()


def test_everything_regenerated_at_native_size_is_a_plain_request(pipe):
    for sampling, jacobi in ((SamplingParams(1.0), 0), (GREEDY, 3)):
        # A canvas draws per image, so the plain request to compare with does too.
        plain = pipe.generate(ImageRequest("a red circle", n=2, seed=7, sampling=sampling, jacobi=jacobi,
                                           seed_per_image=True))
        everything = pipe.generate(ImageRequest("a red circle", n=2, seed=7, sampling=sampling, jacobi=jacobi,
                                                image=photo(), mask=torch.ones(8, 8, dtype=torch.bool)))
        native = pipe.generate(ImageRequest("a red circle", n=2, seed=7, sampling=sampling, jacobi=jacobi,
                                            size="32x32", seed_per_image=True))
        assert torch.equal(plain.tokens, everything.tokens) and torch.equal(plain.tokens, native.tokens)


def test_a_wide_canvas_equals_its_windows_run_one_by_one(pipe):
    request = ImageRequest("a red circle left of a blue square", n=2, seed=3, size=(64, 64), overlap=0.5)
    result = pipe.generate(request)
    assert result.tokens.shape == (2, 256) and result.grid == (16, 16) and result.images[0].size == (64, 64)
    # the reference: each window alone, in index order, on a fresh runner
    geo = Geometry.of(pipe.model.cfg)
    canvas = prepare_canvas(geo, size=(64, 64))
    tokens = CanvasTokens(canvas, 2, geo.native, overlap=0.5)
    assert max(w.wave for w in tokens.windows) < len(tokens.windows) - 1  # some windows share a wave
    tok = pipe.processor.tokenizer
    ids = tok.encode(pipe.processor.t2i_prompt(request.prompt))
    for w in tokens.windows:
        streams = [torch.Generator().manual_seed(window_seed(3, w.index, i)) for i in range(2)]  # one per image
        ran = result.request  # the settings it ran with (the model's defaults filled in)
        base = image_job(ids, tok.pad_id, 2, ran.guidance, ran.sampling, streams, 64)
        job = Job("image", base.prompt_ids, 64, ran.sampling, base.generator, guidance=ran.guidance,
                  known=tokens.known(w))
        (state,) = run_jobs(BatchRunner(pipe.model, rows=4), [job])
        tokens.write(w, state.tokens)
    assert torch.equal(result.tokens, tokens.tokens)
    # its first window is the native image of the same seed (drawn per image, as canvases are)
    plain = pipe.generate(ImageRequest(request.prompt, n=2, seed=3, seed_per_image=True))
    assert torch.equal(result.tokens.view(2, 16, 16)[:, :8, :8], plain.tokens.view(2, 8, 8))


def test_outpainting_keeps_the_source_and_crops_to_the_pixels_asked(pipe):
    image = photo()
    result = pipe.generate(ImageRequest("more", n=1, seed=0, image=image, outpaint="left=10,down=4"))
    assert result.images[0].size == (42, 36) and result.grid == (9, 11)  # 12 px left, 4 px down
    grid = result.tokens.view(9, 11)
    assert torch.equal(grid[:8, 3:].reshape(1, -1), source_tokens(pipe, image))


def test_kept_pixels_are_the_source_and_the_rest_the_decoders(pipe):
    """keep_pixels (the default): every pixel of a kept cell is the source's own, the first half
    patch of the regenerated cells fades from the source to the decoder, and the rest is the VQ
    decoder's; keep_pixels=False gives the decoder's image everywhere. The tokens are the same."""
    image = photo()
    request = ImageRequest("a red circle", n=2, seed=1, image=image, mask=lower_half())
    kept = pipe.generate(request)
    whole = pipe.generate(dataclasses.replace(request, keep_pixels=False))
    assert torch.equal(kept.tokens, whole.tokens)
    source = np.asarray(image).astype(float)
    for got, made, vq in zip(kept.images, whole.images, pipe.decode_tokens(kept.tokens)):
        got, made, vq = (np.asarray(im).astype(float) for im in (got, made, vq))
        assert np.array_equal(made, vq)
        assert np.array_equal(got[:16], source[:16])  # the kept upper half (patch 4: rows 0-15)
        fade = 4 // 2
        for d in range(1, fade + 1):  # rows 16, 17: weights 2/3, 1/3 of the source
            a = 1 - d / (fade + 1)
            assert np.array_equal(got[15 + d], np.rint(a * source[15 + d] + (1 - a) * vq[15 + d]))
        assert np.array_equal(got[16 + fade:], vq[16 + fade:])
        assert not np.array_equal(vq[:16], source[:16])  # what is mended: the decoder's kept area differs


def test_outpainting_keeps_the_source_pixels_in_place(pipe):
    image = photo()
    result = pipe.generate(ImageRequest("more", n=1, seed=0, image=image, outpaint="left=10,down=4"))
    got = np.asarray(result.images[0])
    assert np.array_equal(got[:32, 10:42], np.asarray(image))  # 10 px to its left, 4 below


def test_progress_is_monotonic_and_reaches_the_total(pipe):
    handle = pipe.submit(ImageRequest("a star", n=1, seed=0, size=(64, 32)))
    seen = [(e.steps, e.total) for e in handle if isinstance(e, ImageProgress)]
    handle.result()
    steps = [s for s, _ in seen]
    assert steps == sorted(steps) and seen[-1][0] == seen[-1][1] and len({t for _, t in seen}) == 1
    assert handle.partial_canvas()[0].shape == (1, 128)


def test_cancelling_between_waves_ends_the_request(pipe):
    from openjanus.inference.engine import Cancelled

    handle = pipe.submit(ImageRequest("a star", n=2, seed=0, size=(128, 32)))
    for event in handle:
        if isinstance(event, ImageProgress) and event.steps >= 64:
            handle.cancel()
    with pytest.raises(Cancelled):
        handle.result()
    assert pipe.generate(ImageRequest("a star", n=1, seed=0)).tokens.shape == (1, 64)  # the engine goes on


def rgba(size, clear=None):
    a = np.full((size[1], size[0], 4), 255, dtype=np.uint8)
    if clear:
        x0, y0, x1, y1 = clear
        a[y0:y1, x0:x1, 3] = 0
    return Image.fromarray(a, "RGBA")


@pytest.mark.parametrize("kwargs,fragment", [
    ({"image": photo(), "mask": rgba((32, 32))}, "nothing to regenerate"),
    ({"image": photo(), "mask": rgba((32, 16), (0, 0, 8, 8))}, "the mask is 32x16 but the image is 32x32"),
    ({"image": photo(), "mask": photo()}, "no alpha channel"),
    ({"image": photo()}, "no transparency"),
    ({"size": (34, 32)}, "not a multiple of 4"),
    ({"size": (256, 32)}, "outside 32..128"),
    ({"size": (16, 32)}, "outside 32..128"),
    ({"image": photo(), "region": (30, 30, 40, 40)}, "not a non-empty box"),
    ({"image": b"not an image", "region": (0, 0, 8, 8)}, "cannot read image"),
    ({"image": photo(), "outpaint": {"right": 200}}, "above this model's limit"),
])
def test_bad_edits_are_one_clear_error(pipe, kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        pipe.generate(ImageRequest("x", **kwargs))


@pytest.mark.parametrize("kwargs,fragment", [
    ({"mask": rgba((32, 32))}, "needs a source image"),
    ({"image": photo(), "mask": rgba((32, 32)), "region": (0, 0, 1, 1)}, "not several"),
    ({"size": "big"}, "WIDTHxHEIGHT"),
    ({"region": "1,2"}, "x0,y0,x1,y1"),
    ({"outpaint": "north=3"}, "SIDE=PIXELS"),
    ({"overlap": 1.0}, "overlap must be in"),
])
def test_bad_requests_fail_when_built(kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        ImageRequest("x", **kwargs)


def test_the_image_and_mask_may_be_paths_bytes_or_pil(pipe, tmp_path):
    image, mask = photo(), rgba((32, 32), (0, 16, 32, 32))
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    a = pipe.generate(ImageRequest("a red circle", seed=1, image=image, mask=mask))
    b = pipe.generate(ImageRequest("a red circle", seed=1, image=tmp_path / "in.png",
                                   mask=(tmp_path / "mask.png").read_bytes()))
    c = pipe.generate(ImageRequest("a red circle", seed=1, image=image, mask=lower_half()))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens, c.tokens)
