"""A GenEval-style scorer for images of the shapes world, with no neural network: numpy + PIL.

Detection, in four steps:

1. **Background.** A plane per channel is fitted (robustly) to the image border, which the
   world keeps free of objects; a textured or gradient background is absorbed by the plane or
   stays close to it.
2. **Pixel colours.** Anti-aliasing, blur and a VQ round trip mix an object's colour with the
   background, so a pixel ``p`` is compared with each *segment* from the local background ``B``
   to a palette colour ``P``: ``alpha = <p-B, P-B> / |P-B|^2`` and the residual
   ``|p - B - alpha (P-B)|``. A pixel with ``alpha >= 0.5`` for some colour is foreground, and
   takes the colour of smallest residual (or 'other' when every residual is large). A 3x3 majority
   filter removes speckle.
3. **Components.** Per colour, 8-connected components (run-length union-find), keeping those
   above a minimum area.
4. **Shape.** Each component's mask is compared (IoU) with every shape drawn into the
   component's own bounding box; the best template wins if its IoU is at least
   ``min_shape_iou``, else the shape is unknown.

The spec check follows GenEval's rules (:func:`check_spec`); position uses the same relation
geometry as GenEval (:func:`openjanus.shapes.world.relations`).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from openjanus.shapes.spec import Spec
from openjanus.shapes.world import COLOR_NAMES, COLORS, SHAPES, coverage_mask, relations

BACKGROUND = -1
OTHER = -2  # foreground whose colour is in no palette
MAX_WORK_SIZE = 256  # larger images are box-downsampled first: same decisions, less work
# About 40% of the smallest object the world draws (a small star); specks below are noise.
MIN_AREA_FRAC = 0.006
MIN_SHAPE_IOU = 0.65
# World scenes leave at least half of the image to the background; below this share the image
# is not a scene of this world (noise, clutter) and nothing in it is taken as an object.
MIN_BACKGROUND_FRAC = 0.4
# ... and its background is light and nearly grey (the world's are >= 225 with chroma <= 15);
# a dark or strongly coloured 'background' means the image is not a scene of this world.
MIN_BACKGROUND_LEVEL = 170.0
MAX_BACKGROUND_CHROMA = 50.0
MAX_OTHER_STD = 20.0  # an off-palette object must still be one flat colour, not noise
MIN_ALPHA = 0.5
MAX_RESIDUAL = 55.0


@dataclass(frozen=True)
class Detection:
    """One object found in an image; ``box`` is (x0, y0, x1, y1) in pixels of the input image."""

    shape: str | None
    color: str | None
    box: tuple[float, float, float, float]
    area: float  # pixels of the input image
    shape_iou: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "shape": self.shape,
            "color": self.color,
            "box": [round(v, 2) for v in self.box],
            "area": round(self.area, 1),
            "shape_iou": round(self.shape_iou, 3),
        }


@dataclass(frozen=True)
class SpecCheck:
    """Verdict on one image: correct or not, GenEval-style reasons, and what was seen."""

    correct: bool
    reasons: tuple[str, ...] = field(default=())
    detections: tuple[Detection, ...] = field(default=())

    @property
    def reason(self) -> str:
        return "\n".join(self.reasons)


# --------------------------------------------------------------------------------------------
# Connected components


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: (labels with -1 outside, count).

    Union-find over horizontal runs: the Python work grows with the number of runs, not pixels.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    r_start, c_start = np.nonzero(edges == 1)
    _, c_end = np.nonzero(edges == -1)  # same row-major order as the starts
    n = len(r_start)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rows = r_start.tolist()
    starts = c_start.tolist()
    ends = c_end.tolist()  # exclusive
    row_first = {}
    for i, r in enumerate(rows):
        row_first.setdefault(r, i)
    prev_lo = prev_hi = 0
    cur_row = -1
    for i in range(n):
        r = rows[i]
        if r != cur_row:
            cur_row = r
            if r - 1 in row_first:
                prev_lo = row_first[r - 1]
                prev_hi = row_first[r]
            else:
                prev_lo = prev_hi = 0
        for j in range(prev_lo, prev_hi):
            # 8-connectivity: runs touch if they overlap after widening by one pixel.
            if starts[j] <= ends[i] and starts[i] <= ends[j]:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    labels = np.full((h, w), -1, dtype=np.int32)
    roots: dict[int, int] = {}
    for i in range(n):
        k = roots.setdefault(find(i), len(roots))
        labels[rows[i], starts[i] : ends[i]] = k
    return labels, len(roots)


# --------------------------------------------------------------------------------------------
# Pixels


def _fit_background(img: np.ndarray) -> np.ndarray:
    """Per-pixel background estimate [H, W, 3]: a robust plane fitted to the border."""
    h, w, _ = img.shape
    t = max(1, min(h, w) // 32)
    ys, xs = np.mgrid[0:h, 0:w]
    border = np.zeros((h, w), dtype=bool)
    border[:t], border[-t:], border[:, :t], border[:, -t:] = True, True, True, True
    pix = img[border]
    design = np.stack([np.ones(border.sum()), xs[border] / w, ys[border] / h], axis=1)
    keep = np.ones(len(pix), dtype=bool)
    for _ in range(3):  # refit without the border pixels the plane explains worst (objects, specks)
        coef, *_ = np.linalg.lstsq(design[keep], pix[keep], rcond=None)
        resid = np.linalg.norm(pix - design @ coef, axis=1)
        keep = resid <= max(6.0, 2.5 * float(np.median(resid[keep])))
    full = np.stack([np.ones((h, w)), xs / w, ys / h], axis=-1)
    return (full @ coef).astype(np.float32)


def _background_ok(bg: np.ndarray) -> bool:
    mean = bg.reshape(-1, 3).mean(0)
    return float(mean.mean()) >= MIN_BACKGROUND_LEVEL and float(mean.max() - mean.min()) <= MAX_BACKGROUND_CHROMA


def _classify_against(img: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = img - bg  # [H, W, 3]
    palette = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)  # [K, 3]
    d = palette[None, None] - bg[:, :, None]  # [H, W, K, 3]
    dd = np.maximum((d * d).sum(-1), 1.0)  # [H, W, K]
    alpha = np.clip((v[:, :, None] * d).sum(-1) / dd, 0.0, 1.2)
    resid = np.linalg.norm(v[:, :, None] - alpha[..., None] * d, axis=-1)  # [H, W, K]
    # The colour is the segment that explains the pixel best; only then is its alpha compared
    # with the threshold (thresholding first lets a wrong colour claim half-covered edges).
    resid = np.where(alpha >= 0.2, resid, np.inf)
    best = resid.argmin(-1)
    best_r = np.take_along_axis(resid, best[..., None], -1)[..., 0]
    best_a = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    labels = np.where(best_a >= MIN_ALPHA, np.where(best_r <= MAX_RESIDUAL, best, OTHER), BACKGROUND)
    return _majority3x3(labels, len(COLOR_NAMES)), alpha


def _majority3x3(labels: np.ndarray, k: int) -> np.ndarray:
    # Classes: k palette colours, then OTHER, then BACKGROUND; ties keep the pixel's own label.
    idx = np.where(labels >= 0, labels, np.where(labels == OTHER, k, k + 1))
    onehot = np.eye(k + 2, dtype=np.int16)[idx]  # [H, W, k+2]
    p = np.pad(onehot, ((1, 1), (1, 1), (0, 0)))
    h, w = labels.shape
    votes = sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    votes = votes + onehot  # the centre pixel breaks ties in its own favour
    win = votes.argmax(-1)
    return np.where(win < k, win, np.where(win == k, OTHER, BACKGROUND)).astype(np.int32)


@functools.cache
def _shape_moments(shape: str) -> tuple[float, float, float]:
    """(area fraction of the box, centroid x, centroid y) of a shape in its unit box [-1, 1]^2."""
    n = 256
    cov = coverage_mask(shape, (0, 0, n, n), n, n, supersample=2)
    ys, xs = np.mgrid[0:n, 0:n]
    m = float(cov.sum())
    cx = float((cov * (xs + 0.5)).sum() / m) / n * 2 - 1
    cy = float((cov * (ys + 0.5)).sum() / m) / n * 2 - 1
    return m / (n * n), cx, cy


def classify_shape(soft: np.ndarray) -> tuple[str | None, float]:
    """Best shape for a soft mask (coverage 0..1 of one object, zero elsewhere), and its IoU.

    For each shape the box is fitted from the mask's mass and centroid, which blur preserves,
    so the fit is sub-pixel even for objects a dozen pixels wide; the shape drawn in that box
    is compared with the mask by soft IoU (sum of minima over sum of maxima).
    """
    h, w = soft.shape
    mass = float(soft.sum())
    if mass <= 0:
        return None, 0.0
    ys, xs = np.mgrid[0:h, 0:w]
    cx = float((soft * (xs + 0.5)).sum()) / mass
    cy = float((soft * (ys + 0.5)).sum()) / mass
    best, best_iou = None, 0.0
    for s in SHAPES:
        frac, ox, oy = _shape_moments(s)
        side = (mass / frac) ** 0.5
        x0, y0 = cx - (ox + 1) * side / 2, cy - (oy + 1) * side / 2
        t = coverage_mask(s, (x0, y0, x0 + side, y0 + side), w, h)
        for sigma in BLUR_SIGMAS:
            # Blur and VQ decoding smear edges: match against the template smeared alike.
            tb = _gaussian_blur(t, sigma * side / 12) if sigma else t
            iou = float(np.minimum(tb, soft).sum() / max(float(np.maximum(tb, soft).sum()), 1e-6))
            if iou > best_iou:
                best, best_iou = s, iou
    return best, best_iou


BLUR_SIGMAS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)  # in units of 1/12 of the object side


def _gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array (zero padding), numpy only."""
    r = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    p = np.pad(a, r)
    rows = sum(k[i] * p[:, i : i + a.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * rows[i : i + a.shape[0]] for i in range(2 * r + 1))


def detect(
    image: Image.Image,
    min_area_frac: float = MIN_AREA_FRAC,
    min_shape_iou: float = MIN_SHAPE_IOU,
) -> list[Detection]:
    """The objects of a shapes-world image, largest first.

    An image whose background is not light and nearly grey, or covers less than
    ``MIN_BACKGROUND_FRAC`` of it, is not read as a scene at all (no detections): random colour
    fields would otherwise yield object-like blobs.
    """
    rgb = image.convert("RGB")
    scale = 1.0
    if max(rgb.size) > MAX_WORK_SIZE:
        scale = max(rgb.size) / MAX_WORK_SIZE
        rgb = rgb.resize((round(rgb.width / scale), round(rgb.height / scale)), Image.Resampling.BOX)
    img = np.asarray(rgb, dtype=np.float32)
    bg = _fit_background(img)
    if not _background_ok(bg):
        return []
    labels, alpha = _classify_against(img, bg)
    h, w = labels.shape
    if float((labels == BACKGROUND).mean()) < MIN_BACKGROUND_FRAC:
        return []
    min_area = max(4.0, min_area_frac * h * w)
    pad = 2
    out = []
    for k in [*range(len(COLOR_NAMES)), OTHER]:
        mask = labels == k
        if mask.sum() < min_area:
            continue
        comp, n = label_components(mask)
        areas = np.bincount(comp[comp >= 0], minlength=n)
        for c in np.nonzero(areas >= min_area)[0]:
            ys, xs = np.nonzero(comp == c)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            wy0, wy1, wx0, wx1 = max(y0 - pad, 0), min(y1 + pad, h), max(x0 - pad, 0), min(x1 + pad, w)
            win = comp[wy0:wy1, wx0:wx1] == c
            if k >= 0:
                # Partial coverage of the object's own colour around it, nothing from others.
                near = win | (labels[wy0:wy1, wx0:wx1] == BACKGROUND)
                soft = np.where(near, np.clip((alpha[wy0:wy1, wx0:wx1, k] - 0.1) / 0.9, 0.0, 1.0), 0.0)
                soft = np.where(win, np.maximum(soft, 0.5), soft)
            else:
                if float(img[comp == c].std(axis=0).mean()) > MAX_OTHER_STD:
                    continue
                soft = win.astype(np.float32)
            shape, iou = classify_shape(soft.astype(np.float32))
            out.append(
                Detection(
                    shape=shape if iou >= min_shape_iou else None,
                    color=COLOR_NAMES[k] if k >= 0 else None,
                    box=(x0 * scale, y0 * scale, x1 * scale, y1 * scale),
                    area=float(areas[c]) * scale * scale,
                    shape_iou=iou,
                )
            )
    out.sort(key=lambda d: -d.area)
    return out


# --------------------------------------------------------------------------------------------
# Spec checking


def check_spec(detections: Sequence[Detection], spec: Spec) -> SpecCheck:
    """GenEval's verdict on detections.

    Each ``include`` needs at least ``count`` objects of its class (with its colour, if given;
    GenEval colours only the first ``count`` detections, here any ``count`` of the right colour
    will do since detections carry no confidence); with ``position``, at least ``count`` of them
    must stand in that relation to every object matched by the target ``include``. Each
    ``exclude`` needs fewer than ``count`` of its class. Objects not mentioned are ignored.
    """
    by_class: dict[str, list[Detection]] = {}
    for d in detections:
        if d.shape is not None:
            by_class.setdefault(d.shape, []).append(d)
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in spec.include:
        found = by_class.get(req.cls, [])
        group: list[Detection] | None = None
        if len(found) < req.count:
            reasons.append(f"expected {req.cls}>={req.count}, found {len(found)}")
        elif req.color is not None and sum(d.color == req.color for d in found) < req.count:
            seen = ", ".join(str(d.color) for d in found)
            reasons.append(f"expected {req.color} {req.cls}>={req.count}, found {seen}")
        else:
            group = [d for d in found if req.color is None or d.color == req.color]
        if group is not None and req.position is not None:
            rel, target = req.position
            targets = groups[target] if target < len(groups) else None
            if not targets:
                reasons.append(f"no target for {req.cls} to be {rel}")
                group = None
            else:
                ok = [d for d in group if all(rel in relations(d.box, t.box) for t in targets)]
                if len(ok) < req.count:
                    reasons.append(f"expected {req.cls} {rel} target, found {len(ok)} of {len(group)}")
                    group = None
                else:
                    group = ok
        groups.append(group)
    for req in spec.exclude:
        n = len(by_class.get(req.cls, []))
        if n >= req.count:
            reasons.append(f"expected {req.cls}<{req.count}, found {n}")
    return SpecCheck(correct=not reasons, reasons=tuple(reasons), detections=tuple(detections))


def score_image(image: Image.Image, spec: Spec) -> SpecCheck:
    """Detect the objects of an image and check them against a spec."""
    return check_spec(detect(image), spec)


# --------------------------------------------------------------------------------------------
# Degradations, to measure the scorer on images like a generator's


def degrade(image: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Simulate a VQ round trip: down/up-sampling, Gaussian blur, colour shift and noise, JPEG.

    ``strength`` scales every effect (0 returns a copy); 1.0 is about what a 16x-downsampling
    VQ tokenizer does to flat shapes at 64..384 px.
    """
    if strength <= 0:
        return image.copy()
    img = image.convert("RGB")
    w, h = img.size
    f = 1 + strength * float(rng.uniform(0.5, 1.5))
    img = img.resize((max(8, round(w / f)), max(8, round(h / f))), Image.Resampling.BILINEAR)
    img = img.resize((w, h), Image.Resampling.BICUBIC)
    img = img.filter(ImageFilter.GaussianBlur(radius=strength * float(rng.uniform(0.3, 0.9)) * w / 64))
    a = np.asarray(img, dtype=np.float32)
    gain = 1 + strength * rng.uniform(-0.06, 0.06, size=3)
    offset = strength * rng.uniform(-8, 8, size=3)
    a = a * gain + offset + rng.normal(0.0, 3.0 * strength, size=a.shape)
    img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(np.clip(85 - 45 * strength * rng.uniform(0.5, 1.0), 20, 95)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


RoundTrip = Callable[[Image.Image], Image.Image]
