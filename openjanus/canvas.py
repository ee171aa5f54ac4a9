"""Image-conditioned generation, geometry only: which image tokens are known, which are
regenerated, and how the model's native token grid slides over a canvas of another size.

The model samples one square grid of `native` x `native` image tokens (24 x 24 for Janus-Pro,
8 x 8 for the demo model), each token a `patch` x `patch` pixel square (16, 8). Everything an
edit, an outpainting or a large image needs is said here in tokens on a *canvas*: a grid of
`grid_w` x `grid_h` tokens (the output image is `grid_w * patch` x `grid_h * patch` pixels), a
boolean *regenerate* mask over it (True: sample this token; False: it is known, taken from the
source image) and a plan of *windows*, native-size squares that the engine decodes one after
another or, where they do not depend on each other, as rows of one batch. No model runs here.

Rules (the README's "Editing, outpainting and images of any size" says the same):

* **Size**: each side a multiple of the patch, at least the native side and at most
  `MAX_SIDE_FACTOR` times it (1536 px for Janus-Pro, 256 px for the demo model).
* **Source image of another size or aspect** (`fit_box`): scaled to *cover* the canvas,
  preserving its aspect, and centre-cropped (the same rule as the VQ path for square images).
  Without a size, an edit keeps the image's aspect: the short side becomes the native side,
  the long side the nearest multiple of the patch (`auto_size`).
* **Mask PNG** (OpenAI's convention): fully transparent pixels (alpha 0) mark the area to
  regenerate. A token is regenerated when *any* transparent pixel falls inside it after the
  same cover-and-crop as the image, so a painted stroke is never lost by rounding. A mask of
  another pixel size but the same aspect (within 1%) is scaled; another aspect is refused; a
  mask without an alpha channel is refused (a common mistake: exported without transparency).
* **Region** `x0,y0,x1,y1` in the source image's pixels (x1, y1 exclusive): every token that
  the box touches is regenerated.
* **Nothing to regenerate** is refused (the result would be the source's VQ reconstruction);
  **everything to regenerate** is text-to-image: the source is ignored and, at the native size
  with the same seed, the tokens equal a plain request's exactly.
* **Outpainting** (`outpaint`): the canvas grows by whole patches on each side (amounts are
  rounded up to the patch, and the result is cropped back to the exact pixels asked for); the
  source image fills its old place, everything else is regenerated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from openjanus.errors import UserError
from openjanus.images import ensure_rgb, has_alpha

__all__ = [
    "MAX_SIDE_FACTOR", "DEFAULT_OVERLAP", "Geometry", "Window", "Outpaint", "parse_size", "check_size", "auto_size",
    "fit_box", "fit_image", "image_to_pixels", "mask_from_alpha", "mask_from_region", "has_alpha",
    "transparent_pixels", "plan_windows", "outpaint", "parse_region", "parse_outpaint", "check_regenerate",
    "Canvas", "prepare_canvas", "CanvasTokens", "keep_source_pixels",
]

# The largest canvas side, in native sides (4: 1536 px for Janus-Pro, 256 px for the demo model).
MAX_SIDE_FACTOR = 4
# Window overlap as a fraction of the native side (chosen by bench/bench_editing.py; README).
DEFAULT_OVERLAP = 0.5
# A mask of another size is scaled when its aspect differs from the image's by at most this.
MASK_ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Geometry:
    """The model's token grid: `native` tokens per side of its window, `patch` pixels per token."""

    native: int
    patch: int

    @property
    def native_px(self) -> int:
        return self.native * self.patch

    @property
    def max_px(self) -> int:
        return MAX_SIDE_FACTOR * self.native_px

    @classmethod
    def of(cls, model_cfg) -> Geometry:
        """From a `JanusConfig` (its VQ image size and downsampling factor)."""
        return cls(native=model_cfg.vq.grid, patch=model_cfg.vq.downsample)


# --- sizes ------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """'768x384' -> (768, 384): width x height in pixels."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text or "")
    if not m:
        raise UserError(f"size {text!r} is not WIDTHxHEIGHT in pixels (e.g. 768x384)")
    return int(m[1]), int(m[2])


def check_size(width: int, height: int, geo: Geometry) -> tuple[int, int]:
    """Refuse a size this model cannot produce; returns it."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"{name} must be an integer, got {v!r}")
        if v % geo.patch:
            raise UserError(f"{name} {v} is not a multiple of {geo.patch} px (the image token size); "
                            f"try {max(geo.native_px, round(v / geo.patch) * geo.patch)}")
        if not geo.native_px <= v <= geo.max_px:
            raise UserError(f"{name} {v} is outside {geo.native_px}..{geo.max_px} px (this model's native side "
                            f"{geo.native_px} up to {MAX_SIDE_FACTOR}x it)")
    return width, height


def auto_size(image_w: int, image_h: int, geo: Geometry) -> tuple[int, int]:
    """The canvas an edit without a size gets: the image's aspect, short side native, the long
    side rounded to the nearest patch multiple (at most the cap)."""
    short, long_ = min(image_w, image_h), max(image_w, image_h)
    side = round(long_ / short * geo.native) * geo.patch
    side = min(max(side, geo.native_px), geo.max_px)
    return (side, geo.native_px) if image_w >= image_h else (geo.native_px, side)


# --- the source image on the canvas -----------------------------------------------------------


def fit_box(image_w: int, image_h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """The part of an `image_w` x `image_h` image that fills a `width` x `height` canvas when the
    image is scaled to cover it and centre-cropped: (left, top, right, bottom) in source pixels."""
    scale = max(width / image_w, height / image_h)
    cw, ch = width / scale, height / scale
    left, top = (image_w - cw) / 2, (image_h - ch) / 2
    return (left, top, left + cw, top + ch)


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` covering a `width` x `height` canvas, centre-cropped (PIL bicubic); an image of
    exactly that size is returned unchanged."""
    image = ensure_rgb(image)
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC, box=fit_box(*image.size, width, height))


def image_to_pixels(image: Image.Image) -> Tensor:
    """RGB PIL image -> VQ encoder input float32 [3, H, W] in [-1, 1] (as `preprocess_gen_image`)."""
    x = torch.from_numpy(np.asarray(ensure_rgb(image), dtype=np.uint8).copy()).permute(2, 0, 1)  # [H,W,3] -> [3,H,W]
    return x.float() / 127.5 - 1.0


# --- masks --------------------------------------------------------------------------------------


def transparent_pixels(image: Image.Image) -> np.ndarray:
    """bool [H, W]: the fully transparent pixels (alpha 0) of an image with an alpha channel."""
    if not has_alpha(image):
        raise UserError("the mask has no alpha channel: save it as a PNG whose transparent pixels (alpha 0) "
                        "mark the area to regenerate")
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    return alpha == 0


def _cells_touched(box: tuple[float, float, float, float], image_w: int, image_h: int, width: int, height: int,
                   patch: int) -> tuple[np.ndarray, np.ndarray]:
    """For each token column / row of the canvas, the source pixel range [lo, hi) it covers."""
    left, top, right, bottom = box
    sx, sy = (right - left) / width, (bottom - top) / height  # source pixels per canvas pixel

    def ranges(origin: float, step: float, n: int, limit: int) -> np.ndarray:
        edges = origin + np.arange(n + 1) * patch * step  # token edges in source pixels
        lo = np.clip(np.floor(edges[:-1] + 1e-9), 0, limit - 1).astype(np.int64)
        hi = np.clip(np.ceil(edges[1:] - 1e-9), lo + 1, limit).astype(np.int64)
        return np.stack([lo, hi], 1)

    return ranges(left, sx, width // patch, image_w), ranges(top, sy, height // patch, image_h)


def mask_from_alpha(mask: Image.Image, image_size: tuple[int, int], width: int, height: int,
                    patch: int) -> Tensor:
    """Regenerate mask bool [H/patch, W/patch] from a mask image whose transparent pixels mark the
    area to regenerate, for a source image of `image_size` fitted to a `width` x `height` canvas."""
    iw, ih = image_size
    mw, mh = mask.size
    if (mw, mh) != (iw, ih):
        if abs(mw / mh - iw / ih) > MASK_ASPECT_TOLERANCE * (iw / ih):
            raise UserError(f"the mask is {mw}x{mh} but the image is {iw}x{ih}: give a mask of the image's size "
                            "(or at least its aspect ratio)")
    clear = transparent_pixels(mask)  # [mh, mw] in the mask's own pixels
    # The image's cover-and-crop box, in the mask's pixels (the mask is scaled to the image).
    left, top, right, bottom = fit_box(iw, ih, width, height)
    box = (left * mw / iw, top * mh / ih, right * mw / iw, bottom * mh / ih)
    cols, rows = _cells_touched(box, mw, mh, width, height, patch)
    # Summed-area table: any transparent pixel in a token's source rectangle.
    sat = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    sat[1:, 1:] = clear.cumsum(0).cumsum(1)
    r0, r1 = rows[:, 0][:, None], rows[:, 1][:, None]
    c0, c1 = cols[:, 0][None, :], cols[:, 1][None, :]
    count = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]  # [gh, gw]
    return torch.from_numpy(count > 0)


def parse_region(text: str) -> tuple[int, int, int, int]:
    """'x0,y0,x1,y1' -> the four integers (pixels of the source image; x1, y1 exclusive)."""
    parts = [p.strip() for p in (text or "").split(",")]
    if len(parts) != 4 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise UserError(f"region {text!r} is not x0,y0,x1,y1 in pixels (e.g. 0,0,32,64)")
    x0, y0, x1, y1 = (int(p) for p in parts)
    return x0, y0, x1, y1


def mask_from_region(region: Sequence[int], image_size: tuple[int, int], width: int, height: int,
                     patch: int) -> Tensor:
    """Regenerate mask bool [H/patch, W/patch]: every token the pixel box `region` (x0, y0, x1, y1
    in the source image, x1 and y1 exclusive) touches after the image is fitted to the canvas."""
    iw, ih = image_size
    x0, y0, x1, y1 = region
    if not (0 <= x0 < x1 <= iw and 0 <= y0 < y1 <= ih):
        raise UserError(f"region {x0},{y0},{x1},{y1} is not a non-empty box inside the {iw}x{ih} image "
                        "(x0,y0,x1,y1 with 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height)")
    left, top, right, bottom = fit_box(iw, ih, width, height)
    sx, sy = width / (right - left), height / (bottom - top)  # canvas pixels per source pixel
    gx0, gx1 = math.floor((x0 - left) * sx / patch + 1e-9), math.ceil((x1 - left) * sx / patch - 1e-9)
    gy0, gy1 = math.floor((y0 - top) * sy / patch + 1e-9), math.ceil((y1 - top) * sy / patch - 1e-9)
    out = torch.zeros(height // patch, width // patch, dtype=torch.bool)
    out[max(gy0, 0):max(gy1, 0), max(gx0, 0):max(gx1, 0)] = True
    if not out.any():
        raise UserError(f"region {x0},{y0},{x1},{y1} lies outside the part of the image that is kept "
                        f"(it is cropped to {width}x{height})")
    return out


def check_regenerate(regenerate: Tensor) -> Tensor:
    """Refuse a mask that regenerates nothing (documented: a user error, not a VQ round trip)."""
    if not bool(regenerate.any()):
        raise UserError("the mask leaves nothing to regenerate: make the area to change transparent "
                        "(alpha 0), or give --region")
    return regenerate


# --- outpainting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outpaint:
    """Where the source goes on an outpainting canvas, in pixels: the canvas size, the source's
    placed size and offset (whole patches), and the crop that gives exactly the pixels asked for."""

    width: int
    height: int
    image_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the source on the canvas
    crop: tuple[int, int, int, int]  # the output: the canvas cropped to the requested extension

    def regenerate(self, patch: int) -> Tensor:
        out = torch.ones(self.height // patch, self.width // patch, dtype=torch.bool)
        x0, y0, x1, y1 = (v // patch for v in self.image_box)
        out[y0:y1, x0:x1] = False
        return out


def parse_outpaint(text: str) -> dict[str, int]:
    """'right=128,down=64' (any of left, right, up, down, in pixels) -> {side: pixels}."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        m = re.fullmatch(r"\s*(left|right|up|down)\s*=\s*(\d+)\s*", part)
        if not m:
            raise UserError(f"outpaint {text!r} is not SIDE=PIXELS[,...] with sides left, right, up, down "
                            "(e.g. right=128)")
        out[m[1]] = out.get(m[1], 0) + int(m[2])
    return out


def outpaint(image_w: int, image_h: int, extend: dict[str, int], geo: Geometry) -> Outpaint:
    """The canvas of an image of `image_w` x `image_h` (already on whole patches, e.g. from
    `auto_size`) extended by `extend` pixels per side, each rounded up to whole patches."""
    bad = set(extend) - {"left", "right", "up", "down"}
    if bad:
        raise UserError(f"outpaint sides are left, right, up and down, got {', '.join(sorted(bad))}")
    if not any(extend.values()):
        raise UserError("outpaint extends nothing: give at least one side a positive number of pixels")
    p = geo.patch
    pad = {k: -(-extend.get(k, 0) // p) * p for k in ("left", "right", "up", "down")}
    width, height = image_w + pad["left"] + pad["right"], image_h + pad["up"] + pad["down"]
    if max(width, height) > geo.max_px:
        raise UserError(f"the outpainted image would be {width}x{height} px, above this model's limit of "
                        f"{geo.max_px} px per side")
    box = (pad["left"], pad["up"], pad["left"] + image_w, pad["up"] + image_h)
    crop = (pad["left"] - extend.get("left", 0), pad["up"] - extend.get("up", 0),
            box[2] + extend.get("right", 0), box[3] + extend.get("down", 0))
    return Outpaint(width, height, box, crop)


# --- the sliding window -------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A native-size square of the canvas at token offset (`x`, `y`). It samples the tokens of
    `regenerate` [native, native] (those of its area that no earlier window sampled) and reads
    the rest as known: from the source, or from the windows in `after`. Windows of one `wave`
    never depend on each other."""

    index: int
    x: int
    y: int
    wave: int
    after: tuple[int, ...]
    regenerate: Tensor  # bool [native, native], row-major like the model's raster order

    def area(self, native: int) -> tuple[slice, slice]:
        return slice(self.y, self.y + native), slice(self.x, self.x + native)


def _offsets(extent: int, native: int, overlap: int) -> list[int]:
    """Window offsets along one axis: evenly spread, neighbours overlapping by at least `overlap`."""
    if extent == native:
        return [0]
    stride = native - overlap
    n = -(-(extent - native) // stride) + 1
    return [round(i * (extent - native) / (n - 1)) for i in range(n)]


def plan_windows(regenerate: Tensor, native: int, overlap: float = DEFAULT_OVERLAP) -> list[Window]:
    """The windows that sample every True token of `regenerate` [grid_h, grid_w] exactly once.

    Window positions are a grid over the canvas, neighbours overlapping by `overlap` x native
    tokens (at least one, less than native). They are taken one at a time, each time the one
    whose tokens to sample see the most known tokens before them in raster order (the model's
    context; known: from the source, or sampled by a window taken earlier), ties broken by the
    most known tokens, then raster order. A canvas with nothing known is therefore covered in
    raster order (each window continuing the ones above and to its left), and an image extended
    to the left is grown outward from the image instead of meeting it from a blank start.

    A window reads the tokens of earlier windows that lie in its area (`after`); its `wave` is
    one more than theirs, so running wave after wave (windows of a wave together) gives exactly
    the tokens of running them one by one. Windows with nothing to sample are left out; a canvas
    of the native size is one window.
    """
    grid_h, grid_w = regenerate.shape
    if grid_h < native or grid_w < native:
        raise UserError(f"the canvas ({grid_w}x{grid_h} tokens) is smaller than the model's window "
                        f"({native}x{native})")
    if not 0 <= overlap < 1:
        raise UserError(f"overlap must be in [0, 1) of the window side, got {overlap}")
    step_overlap = min(native - 1, max(1, round(overlap * native)))
    owner = torch.full((grid_h, grid_w), -1, dtype=torch.long)  # which window samples each token
    positions = [(y, x) for y in _offsets(grid_h, native, step_overlap) for x in _offsets(grid_w, native, step_overlap)]
    windows: list[Window] = []
    while True:
        best, best_key = None, None
        for rank, (y, x) in enumerate(positions):
            area = (slice(y, y + native), slice(x, x + native))
            todo = (regenerate[area] & (owner[area] < 0)).reshape(-1)
            if not todo.any():
                continue
            known = (~regenerate[area] | (owner[area] >= 0)).reshape(-1)
            seen = (torch.cumsum(known.long(), 0) * todo).sum() / todo.sum()  # known tokens before each sampled one
            key = (-float(seen), -int(known.sum()), rank)
            if best_key is None or key < best_key:
                best, best_key = (y, x), key
        if best is None:
            return windows
        y, x = best
        area = (slice(y, y + native), slice(x, x + native))
        todo = regenerate[area] & (owner[area] < 0)
        index = len(windows)
        after = tuple(sorted({int(o) for o in owner[area].unique() if o >= 0}))
        wave = 1 + max((windows[a].wave for a in after), default=-1)
        owner[area][todo] = index
        windows.append(Window(index, x, y, wave, after, todo.clone()))


# --- a request's canvas -----------------------------------------------------------------------


@dataclass(frozen=True)
class Canvas:
    """What one image request decodes: a `width` x `height` canvas, the source image placed on it
    at `image_box` (pixels, whole patches; None for text-to-image), which tokens to sample
    (`regenerate`, bool [height/patch, width/patch]) and the crop of the result (outpainting
    rounds its extension up to whole patches)."""

    width: int
    height: int
    regenerate: Tensor
    image: Image.Image | None = None  # the source, already fitted to its box on the canvas
    image_box: tuple[int, int, int, int] | None = None
    crop: tuple[int, int, int, int] | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of image tokens."""
        return tuple(self.regenerate.shape)  # type: ignore[return-value]

    @property
    def output_size(self) -> tuple[int, int]:
        if self.crop is None:
            return self.width, self.height
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]


def prepare_canvas(geo: Geometry, size: tuple[int, int] | None = None, image: Image.Image | None = None,
                   mask: Image.Image | Tensor | None = None, region: Sequence[int] | None = None,
                   extend: dict[str, int] | None = None) -> Canvas:
    """The canvas of a request (see the module doc for every rule). `image` is a loaded PIL
    image (with its alpha channel, if any); `mask` a PIL image whose transparent pixels mark the
    area to regenerate, or a bool tensor at the canvas's token grid (True: regenerate)."""
    if image is None:
        if mask is not None or region is not None or extend:
            raise UserError("a mask, a region or an outpainting needs a source image")
        width, height = check_size(*(size or (geo.native_px, geo.native_px)), geo)
        return Canvas(width, height, torch.ones(height // geo.patch, width // geo.patch, dtype=torch.bool))
    if sum(x is not None and x != {} for x in (mask, region, extend)) > 1:
        raise UserError("give one of a mask, a region or an outpainting, not several")
    rgb = ensure_rgb(image)
    if extend:
        if size is not None:
            raise UserError("outpainting sets the size itself (the image at its automatic size plus the "
                            "extension); leave size out")
        iw, ih = auto_size(*image.size, geo)
        op = outpaint(iw, ih, extend, geo)
        return Canvas(op.width, op.height, op.regenerate(geo.patch), fit_image(rgb, iw, ih), op.image_box, op.crop)
    width, height = check_size(*(size or auto_size(*image.size, geo)), geo)
    grid = (height // geo.patch, width // geo.patch)
    if isinstance(mask, Tensor):
        if mask.dtype != torch.bool or tuple(mask.shape) != grid:
            raise UserError(f"a token mask must be a bool tensor of shape {list(grid)} (rows, columns of image "
                            f"tokens), got {mask.dtype} {list(mask.shape)}")
        regenerate = mask.clone()
    elif region is not None:
        regenerate = mask_from_region(region, image.size, width, height, geo.patch)
    else:
        source = mask
        if source is None:
            if not has_alpha(image):
                raise UserError("no mask given and the image has no transparency: give a mask (transparent "
                                "pixels mark the area to regenerate) or a region")
            source = image
        regenerate = mask_from_alpha(source, image.size, width, height, geo.patch)
    check_regenerate(regenerate)
    return Canvas(width, height, regenerate, fit_image(rgb, width, height), (0, 0, width, height))


def keep_source_pixels(image: Image.Image, canvas: Canvas, patch: int, fade: int | None = None) -> Image.Image:
    """The decoded canvas `image` (before any crop) with the source's own pixels wherever its
    tokens were kept: the VQ decoder reconstructs kept tokens close to, not exactly as, the
    source (a slight blur and colour shift), so the kept area is pasted back. Inside the
    regenerated cells next to kept ones, the source fades into the generated pixels over `fade`
    pixels (default half a patch) so no seam shows; farther in, and outside the source (an
    outpainting's new area), the pixels are the generated ones. A canvas without a source
    image is returned unchanged."""
    if canvas.image is None or canvas.image_box is None:
        return image
    fade = patch // 2 if fade is None else fade
    x0, y0, x1, y1 = canvas.image_box
    width, height = canvas.width, canvas.height
    kept = np.zeros((height, width), dtype=bool)
    cells = ~canvas.regenerate.numpy()
    kept[:] = cells.repeat(patch, 0).repeat(patch, 1)[:height, :width]
    inside = np.zeros_like(kept)
    inside[y0:y1, x0:x1] = True
    kept &= inside
    alpha = kept.astype(np.float32)
    reached = kept.copy()
    for d in range(1, fade + 1):  # Chebyshev rings around the kept area, within the source
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= inside
        alpha[grown & ~reached] = 1 - d / (fade + 1)
        reached = grown
    source = np.zeros((height, width, 3), dtype=np.float32)
    source[y0:y1, x0:x1] = np.asarray(ensure_rgb(canvas.image), dtype=np.float32)
    made = np.asarray(ensure_rgb(image), dtype=np.float32)
    if made.shape != source.shape:
        raise ValueError(f"decoded image {made.shape[1]}x{made.shape[0]} is not the canvas {width}x{height}")
    a = alpha[..., None]
    return Image.fromarray(np.rint(a * source + (1 - a) * made).clip(0, 255).astype(np.uint8))


class CanvasTokens:
    """The image tokens of `n` images on one canvas while its windows are decoded: known tokens
    from the source (VQ-encoded), then each window's samples as they finish. The engine asks
    for a window's known tokens when the window's wave starts and writes back what it sampled;
    the finished canvas is `tokens` [n, rows * columns] in raster order."""

    def __init__(self, canvas: Canvas, n: int, native: int, source: Tensor | None = None,
                 overlap: float = DEFAULT_OVERLAP) -> None:
        rows, cols = canvas.grid
        self.canvas, self.native = canvas, native
        self.grid = torch.full((n, rows, cols), -1, dtype=torch.long)  # -1: not known yet
        if source is not None:
            self.grid[:, ~canvas.regenerate] = source.to(torch.long)[~canvas.regenerate]
        self.windows = plan_windows(canvas.regenerate, native, overlap)

    @property
    def waves(self) -> list[list[Window]]:
        """The windows grouped by wave, in order (a wave's windows run together)."""
        out: list[list[Window]] = []
        for w in self.windows:
            while len(out) <= w.wave:
                out.append([])
            out[w.wave].append(w)
        return out

    def known(self, window: Window, images: slice = slice(None)) -> Tensor:
        """[images, native^2] tokens of the window's area in raster order; -1 where it samples."""
        grid = self.grid[images]
        area = grid[(slice(None), *window.area(self.native))].reshape(grid.shape[0], -1)
        flat = window.regenerate.reshape(-1)
        if bool((area[:, ~flat] < 0).any()):
            raise RuntimeError(f"window {window.index} reads tokens not decoded yet (its wave came too early)")
        return area.masked_fill(flat, -1)

    def write(self, window: Window, tokens: Tensor, images: slice = slice(None)) -> None:
        """Store a window's tokens [images, native^2] (only the ones it sampled are taken)."""
        grid, g = self.grid[images], self.native
        n = grid.shape[0]
        area = grid[(slice(None), *window.area(g))]  # a view: writes go to the grid
        mask = window.regenerate.expand(n, g, g)
        area[mask] = tokens.to("cpu", torch.long).reshape(n, g, g)[mask]

    @property
    def tokens(self) -> Tensor:
        """[n, rows * columns] in raster order (-1 where nothing is decoded yet)."""
        return self.grid.reshape(self.grid.shape[0], -1)

    @property
    def done(self) -> bool:
        return bool((self.grid >= 0).all())
