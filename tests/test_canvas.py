"""Canvas geometry for edits, outpainting and large images (`openjanus.canvas`): pure functions,
checked against hand-worked cases and against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from openjanus.canvas import (
    Geometry,
    auto_size,
    check_regenerate,
    check_size,
    fit_box,
    fit_image,
    mask_from_alpha,
    mask_from_region,
    outpaint,
    parse_outpaint,
    parse_region,
    parse_size,
    plan_windows,
)
from openjanus.errors import UserError

DEMO = Geometry(native=8, patch=8)  # the demo model: 64 px, 8 x 8 tokens
PRO = Geometry(native=24, patch=16)  # Janus-Pro: 384 px, 24 x 24 tokens


def rgba_mask(size, clear_boxes):
    """An opaque RGBA mask with the pixel boxes `clear_boxes` made fully transparent."""
    a = np.full((size[1], size[0], 4), 255, dtype=np.uint8)
    for x0, y0, x1, y1 in clear_boxes:
        a[y0:y1, x0:x1, 3] = 0
    return Image.fromarray(a, "RGBA")


def test_sizes_parse_and_validate():
    assert parse_size("768x384") == (768, 384)
    assert parse_size(" 64X128 ") == (64, 128)
    assert check_size(768, 384, PRO) == (768, 384)
    for bad, fragment in [((770, 384), "multiple of 16"), ((368, 384), "outside 384..1536"),
                          ((384, 1552), "outside 384..1536")]:
        with pytest.raises(UserError, match=fragment):
            check_size(*bad, PRO)
    for text in ("768", "768x", "x384", "a x b", "768*384"):
        with pytest.raises(UserError, match="WIDTHxHEIGHT"):
            parse_size(text)


def test_auto_size_keeps_the_aspect_with_the_short_side_native():
    assert auto_size(1024, 768, PRO) == (512, 384)  # 4:3 -> 32 x 24 tokens
    assert auto_size(768, 1024, PRO) == (384, 512)
    assert auto_size(300, 300, PRO) == (384, 384)
    assert auto_size(100, 64, DEMO) == (96, 64)  # 1.5625 * 8 tokens = 12.5 -> 12
    assert auto_size(10_000, 10, PRO) == (1536, 384)  # capped


def test_fit_covers_and_centre_crops():
    assert fit_box(200, 100, 64, 64) == (50.0, 0.0, 150.0, 100.0)
    assert fit_box(100, 200, 128, 64) == (0.0, 75.0, 100.0, 125.0)
    img = Image.new("RGB", (200, 100), "white")
    img.paste((255, 0, 0), (0, 0, 50, 100))  # the left quarter is red: cropped away for a square
    out = fit_image(img, 64, 64)
    assert out.size == (64, 64) and np.asarray(out)[..., 1].min() > 200
    same = Image.new("RGB", (64, 64), "blue")
    assert fit_image(same, 64, 64) is same


def brute_force_alpha_mask(clear: np.ndarray, box, width, height, patch):
    """A token is regenerated iff a transparent source pixel overlaps its source rectangle."""
    left, top, right, bottom = box
    sx, sy = (right - left) / width, (bottom - top) / height
    out = np.zeros((height // patch, width // patch), dtype=bool)
    for r, c in itertools.product(range(height // patch), range(width // patch)):
        x0, x1 = left + c * patch * sx, left + (c + 1) * patch * sx
        y0, y1 = top + r * patch * sy, top + (r + 1) * patch * sy
        ys, xs = np.nonzero(clear)
        out[r, c] = bool(np.any((xs + 1 > x0) & (xs < x1) & (ys + 1 > y0) & (ys < y1)))
    return out


@pytest.mark.parametrize("image_size,canvas", [((64, 64), (64, 64)), ((200, 100), (64, 64)),
                                               ((100, 150), (64, 128)), ((37, 53), (128, 64))])
def test_alpha_mask_marks_every_token_a_transparent_pixel_touches(image_size, canvas):
    rng = np.random.default_rng(0)
    for _ in range(5):
        clear = rng.random((image_size[1], image_size[0])) < 0.002  # a few scattered single pixels
        a = np.full((*clear.shape, 4), 255, dtype=np.uint8)
        a[clear, 3] = 0
        got = mask_from_alpha(Image.fromarray(a, "RGBA"), image_size, *canvas, patch=8)
        want = brute_force_alpha_mask(clear, fit_box(*image_size, *canvas), *canvas, 8)
        assert got.numpy().tolist() == want.tolist()


def test_alpha_mask_on_the_grid_and_partial_alpha():
    mask = rgba_mask((64, 64), [(0, 32, 64, 64)])  # the lower half transparent
    got = mask_from_alpha(mask, (64, 64), 64, 64, 8)
    assert got[:4].sum() == 0 and bool(got[4:].all())
    # alpha 1..254 is not transparent (OpenAI: fully transparent areas are edited)
    a = np.asarray(mask).copy()
    a[a[..., 3] == 0, 3] = 1
    with pytest.raises(UserError, match="nothing to regenerate"):
        check_regenerate(mask_from_alpha(Image.fromarray(a, "RGBA"), (64, 64), 64, 64, 8))


def test_a_mask_of_another_size_is_scaled_and_another_aspect_refused():
    small = rgba_mask((32, 32), [(16, 0, 32, 32)])  # right half, at half the image's resolution
    got = mask_from_alpha(small, (64, 64), 64, 64, 8)
    assert bool(got[:, 4:].all()) and got[:, :4].sum() == 0
    with pytest.raises(UserError, match="the mask is 64x32 but the image is 64x64"):
        mask_from_alpha(rgba_mask((64, 32), [(0, 0, 8, 8)]), (64, 64), 64, 64, 8)
    with pytest.raises(UserError, match="no alpha channel"):
        mask_from_alpha(Image.new("RGB", (64, 64)), (64, 64), 64, 64, 8)


def test_region_marks_the_tokens_the_box_touches():
    got = mask_from_region((9, 0, 17, 8), (64, 64), 64, 64, 8)  # columns 1..2 of the first row
    assert torch.nonzero(got).tolist() == [[0, 1], [0, 2]]
    # a 128 x 64 image on a 64 x 64 canvas: x 32..96 is kept, scaled by 1
    got = mask_from_region((0, 0, 40, 64), (128, 64), 64, 64, 8)
    assert bool(got[:, 0].all()) and got[:, 1:].sum() == 0
    with pytest.raises(UserError, match="outside the part of the image that is kept"):
        mask_from_region((0, 0, 32, 64), (128, 64), 64, 64, 8)
    for bad in [(0, 0, 0, 8), (10, 0, 5, 8), (0, 0, 65, 8), (-1, 0, 8, 8)]:
        with pytest.raises(UserError, match="not a non-empty box"):
            mask_from_region(bad, (64, 64), 64, 64, 8)
    assert parse_region("1, 2,3,4") == (1, 2, 3, 4)
    with pytest.raises(UserError, match="x0,y0,x1,y1"):
        parse_region("1,2,3")


def test_outpaint_canvas_rounds_up_to_patches_and_crops_back():
    op = outpaint(64, 64, parse_outpaint("right=20,up=8"), DEMO)
    assert (op.width, op.height) == (88, 72)
    assert op.image_box == (0, 8, 64, 72)
    assert op.crop == (0, 0, 84, 72)
    regen = op.regenerate(8)
    assert regen.shape == (9, 11) and bool(regen[0].all()) and bool(regen[:, 8:].all())
    assert regen[1:, :8].sum() == 0
    with pytest.raises(UserError, match="extends nothing"):
        outpaint(64, 64, {"right": 0}, DEMO)
    with pytest.raises(UserError, match="above this model's limit of 256"):
        outpaint(64, 64, {"left": 200}, DEMO)
    with pytest.raises(UserError, match="SIDE=PIXELS"):
        parse_outpaint("sideways=3")


def simulate(windows, regenerate, native):
    """Run a plan one window at a time; returns which window sampled each token, and checks that
    every window reads only tokens that exist (source or sampled by a window it runs after)."""
    owner = torch.where(regenerate, -1, -2)  # -2: known from the source
    for w in sorted(windows, key=lambda w: (w.wave, w.index)):
        area = owner[w.area(native)]
        read = set(area[~w.regenerate].unique().tolist()) - {-2}
        assert -1 not in read, f"window {w.index} reads a token nobody sampled yet"
        assert read <= set(w.after)
        assert bool((area[w.regenerate] == -1).all()), "a token sampled twice"
        area[w.regenerate] = w.index
    assert bool((owner != -1).all()), "a token nobody sampled"
    return owner


@pytest.mark.parametrize("shape", [(8, 8), (8, 16), (16, 8), (24, 24), (11, 29)])
@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
def test_window_plan_samples_every_token_once_in_a_valid_order(shape, overlap):
    full = torch.ones(shape, dtype=torch.bool)
    windows = plan_windows(full, 8, overlap)
    simulate(windows, full, 8)
    assert windows[0].wave == 0 and (windows[0].x, windows[0].y) == (0, 0)
    for w in windows:
        assert all(windows[a].wave < w.wave for a in w.after)
        assert 0 <= w.x <= shape[1] - 8 and 0 <= w.y <= shape[0] - 8
    rng = torch.Generator().manual_seed(1)
    sparse = torch.rand(shape, generator=rng) < 0.3
    simulate(plan_windows(sparse, 8, overlap), sparse, 8)


def test_window_plan_shapes():
    assert len(plan_windows(torch.ones(8, 8, dtype=torch.bool), 8)) == 1
    wide = plan_windows(torch.ones(8, 16, dtype=torch.bool), 8, 0.5)
    assert [(w.x, w.wave, w.after) for w in wide] == [(0, 0, ()), (4, 1, (0,)), (8, 2, (1,))]
    assert int(wide[1].regenerate.sum()) == 8 * 4 and int(wide[2].regenerate.sum()) == 8 * 4
    # 3 x 3 windows of a 16 x 16 canvas: (4, 0) and (0, 4) read nothing of each other, so
    # they share a wave (a wavefront over the windows)
    square = plan_windows(torch.ones(16, 16, dtype=torch.bool), 8, 0.5)
    waves = {(w.x, w.y): w.wave for w in square}
    assert waves[(4, 0)] == waves[(0, 4)] == 1 and waves[(8, 0)] == waves[(4, 4)] == waves[(0, 8)] == 2
    assert max(waves.values()) == 4, "9 windows in 5 waves"
    # only windows with something to sample: an edit in one corner of a wide canvas
    corner = torch.zeros(8, 16, dtype=torch.bool)
    corner[6:, 14:] = True
    only = plan_windows(corner, 8, 0.5)
    assert [(w.x, w.y) for w in only] == [(8, 0)]
    with pytest.raises(UserError, match="smaller than the model's window"):
        plan_windows(torch.ones(4, 16, dtype=torch.bool), 8)


def test_prepare_canvas_for_each_kind_of_request():
    from openjanus.canvas import prepare_canvas

    plain = prepare_canvas(DEMO)
    assert (plain.width, plain.height, plain.grid) == (64, 64, (8, 8)) and bool(plain.regenerate.all())
    wide = prepare_canvas(DEMO, size=(128, 64))
    assert wide.grid == (8, 16) and wide.image is None
    photo = Image.new("RGB", (200, 100), "white")
    edit = prepare_canvas(DEMO, image=photo, region=(0, 0, 100, 50))  # auto size keeps 2:1
    assert (edit.width, edit.height) == (128, 64) and edit.image.size == (128, 64)
    assert int(edit.regenerate.sum()) == 4 * 8 and bool(edit.regenerate[:4, :8].all())
    # the image's own transparency is the mask when none is given (OpenAI's rule)
    holed = rgba_mask((64, 64), [(0, 0, 64, 8)])
    assert int(prepare_canvas(DEMO, image=holed).regenerate.sum()) == 8
    with pytest.raises(UserError, match="no transparency"):
        prepare_canvas(DEMO, image=photo)
    tokens = torch.zeros(8, 8, dtype=torch.bool)
    tokens[2, 3] = True
    assert prepare_canvas(DEMO, image=holed.convert("RGB"), mask=tokens).regenerate.tolist() == tokens.tolist()
    with pytest.raises(UserError, match="shape \\[8, 8\\]"):
        prepare_canvas(DEMO, image=holed, mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(UserError, match="nothing to regenerate"):
        prepare_canvas(DEMO, image=photo, mask=torch.zeros(8, 16, dtype=torch.bool))
    out = prepare_canvas(DEMO, image=Image.new("RGB", (64, 64)), extend={"left": 30})
    assert (out.width, out.image_box, out.crop, out.output_size) == (96, (32, 0, 96, 64), (2, 0, 96, 64), (94, 64))
    for kwargs, fragment in [({"mask": tokens}, "needs a source image"),
                             ({"image": photo, "region": (0, 0, 8, 8), "extend": {"up": 8}}, "not several"),
                             ({"image": photo, "size": (128, 64), "extend": {"up": 8}}, "leave size out")]:
        with pytest.raises(UserError, match=fragment):
            prepare_canvas(DEMO, **kwargs)


def test_canvas_tokens_feed_each_window_what_came_before():
    from openjanus.canvas import CanvasTokens, prepare_canvas

    canvas = prepare_canvas(DEMO, image=Image.new("RGB", (64, 64)), extend={"right": 64})  # 8 x 16 tokens
    source = torch.arange(8 * 16).view(8, 16)
    run = CanvasTokens(canvas, n=2, native=8, source=source)
    assert [[w.index for w in wave] for wave in run.waves] == [[0], [1]]  # x = 4, then x = 8
    first, second = run.windows
    known = run.known(first)
    assert known.shape == (2, 64)
    grid = known.view(2, 8, 8)
    assert grid[:, :, :4].tolist() == source[:, 4:8].expand(2, 8, 4).tolist()  # the source's right half
    assert bool((grid[:, :, 4:] == -1).all())
    with pytest.raises(RuntimeError, match="not decoded yet"):
        run.known(second)
    sampled = torch.full((2, 64), 1000)
    sampled[1] = 2000
    run.write(first, sampled)
    again = run.known(second).view(2, 8, 8)
    assert again[0, :, :4].tolist() == [[1000] * 4] * 8 and again[1, :, :4].tolist() == [[2000] * 4] * 8
    run.write(second, torch.full((2, 64), 7))
    assert run.done and run.tokens.shape == (2, 128)
    assert run.tokens.view(2, 8, 16)[0, 0].tolist() == [*range(8), *[1000] * 4, *[7] * 4]


def test_windows_grow_outward_from_what_is_known():
    left = torch.zeros(8, 16, dtype=torch.bool)
    left[:, :8] = True  # the image is the right half: outpainting to the left
    plan = plan_windows(left, 8, 0.5)
    assert [(w.x, w.y, w.wave) for w in plan] == [(4, 0, 0), (0, 0, 1)]
    right = torch.zeros(8, 16, dtype=torch.bool)
    right[:, 8:] = True
    assert [(w.x, w.y) for w in plan_windows(right, 8, 0.5)] == [(4, 0), (8, 0)]
    up = torch.zeros(16, 8, dtype=torch.bool)
    up[:8] = True  # nothing known comes before the new rows: the window touching the image, then above
    assert [(w.x, w.y) for w in plan_windows(up, 8, 0.5)] == [(0, 4), (0, 0)]
