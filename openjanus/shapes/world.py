"""The shapes world: scenes of 1 to 4 flat coloured shapes, sampled from a seed and drawn with PIL.

A :class:`Scene` is resolution-free: centres and sizes are fractions of the image side, so one
scene renders identically (up to resampling) at 64 or 384 pixels. Everything random is drawn
from a ``numpy.random.Generator`` the caller seeds, and rendering itself is deterministic (the
background texture has its own seed stored in the scene), so ``render(scene)`` is a pure
function and a dataset sample is fixed by ``(seed, index)`` alone.

The world is built to be read back by :mod:`openjanus.shapes.scorer` without a neural network:
backgrounds are light and nearly grey, object colours are saturated or dark and far apart,
objects never overlap and keep a gap between them and from the border.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "diamond": "diamonds",
    "cross": "crosses",
}

# Chosen so that each colour lies far from the segment joining any other colour to a light
# background: anti-aliased edges and blur mix an object with the background, and the scorer
# classifies a pixel by the nearest such segment (see scorer._classify_against).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 205, 25),
    "green": (35, 160, 60),
    "blue": (35, 75, 215),
    "purple": (130, 50, 180),
    "pink": (240, 90, 200),
    "brown": (120, 70, 30),
    "black": (25, 25, 25),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Object side as a fraction of the image side; a scene jitters each by up to +-8%.
SIZES: dict[str, float] = {"small": 0.20, "medium": 0.26, "large": 0.32}
SIZE_JITTER = 0.08
MAX_OBJECTS = 4
# Layout guarantees the scorer relies on: no object closer than GAP (fraction of the side) to
# another one, nor than MARGIN to the border, so blurred objects stay separate components.
GAP = 0.08
MARGIN = 0.04
COLOR_JITTER = 10  # per-channel uniform jitter of an object's colour, in 0..255 units

BACKGROUND_KINDS: tuple[str, ...] = ("plain", "noise", "gradient", "paper")
BACKGROUND_COLORS: tuple[tuple[int, int, int], ...] = (
    (250, 250, 250),
    (236, 236, 236),
    (246, 241, 226),
    (229, 236, 246),
    (232, 243, 232),
    (246, 234, 234),
)

# The four relations of GenEval, with the same geometry: the centre offset is shrunk by
# POSITION_THRESHOLD times the summed box sizes, and a relation holds when its axis carries more
# than half of the (normalised) remaining offset.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
POSITION_THRESHOLD = 0.1

SUPERSAMPLE = 4
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024


@dataclass(frozen=True)
class SceneObject:
    """One shape: class, colour name and exact RGB, and its square box in image fractions."""

    shape: str
    color: str
    rgb: tuple[int, int, int]
    size_name: str
    size: float  # side of the (square) box, fraction of the image side
    center: tuple[float, float]  # (x, y), fractions of the image side, y down

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in fractions of the image side."""
        h = self.size / 2
        return (self.center[0] - h, self.center[1] - h, self.center[0] + h, self.center[1] + h)

    def bbox(self, image_size: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in pixels for an image of side ``image_size``."""
        return tuple(v * image_size for v in self.box)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Background:
    """A light, nearly grey background: plain, with noise, a gradient, or low-frequency 'paper'."""

    kind: str
    rgb: tuple[int, int, int]
    rgb2: tuple[int, int, int]
    seed: int
    direction: int = 0  # gradient: 0 horizontal, 1 vertical, 2 diagonal


@dataclass(frozen=True)
class Scene:
    """Objects (never overlapping), the default render size and the background."""

    objects: tuple[SceneObject, ...]
    image_size: int
    background: Background

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        """Rebuild a scene written by :meth:`to_dict`."""
        objs = tuple(
            SceneObject(
                shape=o["shape"],
                color=o["color"],
                rgb=tuple(o["rgb"]),
                size_name=o["size_name"],
                size=float(o["size"]),
                center=(float(o["center"][0]), float(o["center"][1])),
            )
            for o in d["objects"]
        )
        b = d["background"]
        bg = Background(b["kind"], tuple(b["rgb"]), tuple(b["rgb2"]), int(b["seed"]), int(b["direction"]))
        return cls(objects=objs, image_size=int(d["image_size"]), background=bg)

    def count(self, shape: str, color: str | None = None) -> int:
        """How many objects have this shape (and colour, if given)."""
        return sum(1 for o in self.objects if o.shape == shape and (color is None or o.color == color))

    @property
    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    @property
    def pairs(self) -> set[tuple[str, str]]:
        """The distinct (colour, shape) pairs present."""
        return {(o.color, o.shape) for o in self.objects}


def check_image_size(size: int) -> int:
    """Validate a render size, returning it."""
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image size {size} is outside {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels")
    return size


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[:1] in "aeiou" else "a"


def plural(shape: str) -> str:
    """Plural of a shape name."""
    return PLURALS[shape]


# --------------------------------------------------------------------------------------------
# Geometry


def relations(
    box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD
) -> set[str]:
    """The GenEval relations that hold for box A relative to box B (y grows downwards).

    Boxes are (x0, y0, x1, y1) in any common unit. Diagonal placements can satisfy two relations;
    boxes whose centres nearly coincide satisfy none.
    """
    ca = np.array([(box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2])
    cb = np.array([(box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2])
    dims = np.array([box_a[2] - box_a[0] + box_b[2] - box_b[0], box_a[3] - box_a[1] + box_b[3] - box_b[1]])
    offset = ca - cb
    norm = float(np.linalg.norm(offset))
    shrunk = np.maximum(np.abs(offset) - threshold * dims, 0.0) * np.sign(offset)
    if norm == 0 or np.all(np.abs(shrunk) < 1e-6 * max(1.0, float(dims.max()))):
        return set()
    dx, dy = shrunk / norm
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def clear_relation(box_a: Sequence[float], box_b: Sequence[float]) -> str | None:
    """The single relation of A to B when exactly one holds, with margin to spare, else None.

    'With margin' means it still holds, alone, at twice the GenEval threshold, so a slightly
    blurred or shifted detection keeps the same answer.
    """
    strict = relations(box_a, box_b, threshold=2 * POSITION_THRESHOLD)
    loose = relations(box_a, box_b)
    if len(strict) == 1 and strict == loose:
        return next(iter(strict))
    return None


def _star_points(n: int = 5, inner: float = 0.5) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + k * math.pi / n
        pts.append((r * math.cos(a), r * math.sin(a)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    # Stretch to fill [-1, 1]^2 exactly so every shape's drawn box is its tight bounding box.
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [(2 * (x - x0) / (x1 - x0) - 1, 2 * (y - y0) / (y1 - y0) - 1) for x, y in pts]


_ARM = 0.30  # cross arm thickness, fraction of the box side (thin enough not to blur into a diamond)
# Polygons in the unit box [-1, 1]^2, y down; the circle is drawn as an ellipse.
SHAPE_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
    "star": _star_points(),
    "cross": [
        (-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM),
        (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM),
    ],
}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[float], fill: int = 255) -> None:
    """Draw one shape filling the box (x0, y0, x1, y1) on an ImageDraw, without anti-aliasing."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
        return
    if shape not in SHAPE_POLYGONS:
        raise ValueError(f"unknown shape {shape!r}; shapes are {', '.join(SHAPES)}")
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    draw.polygon([(cx + u * hw, cy + v * hh) for u, v in SHAPE_POLYGONS[shape]], fill=fill)


def coverage_mask(shape: str, box: Sequence[float], width: int, height: int,
                  supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction (0..1) of each pixel of a width x height canvas covered by the shape in ``box``."""
    s = supersample
    canvas = Image.new("L", (width * s, height * s), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, [v * s for v in box])
    # BOX resampling averages each s x s block: exact area coverage, i.e. anti-aliasing.
    small = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Rendering


def render_background(bg: Background, size: int) -> np.ndarray:
    """The background as a float32 array [size, size, 3] in 0..255."""
    base = np.array(bg.rgb, dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    rng = np.random.default_rng(bg.seed)
    if bg.kind == "plain":
        pass
    elif bg.kind == "noise":
        img += rng.normal(0.0, 3.0, size=(size, size, 1)).astype(np.float32)
    elif bg.kind == "gradient":
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        if bg.direction == 0:
            w = np.broadcast_to(t[None, :], (size, size))
        elif bg.direction == 1:
            w = np.broadcast_to(t[:, None], (size, size))
        else:
            w = (t[None, :] + t[:, None]) / 2
        img = img * (1 - w[..., None]) + np.array(bg.rgb2, dtype=np.float32) * w[..., None]
    elif bg.kind == "paper":
        # Low-frequency blotches: a coarse random grid upsampled smoothly.
        coarse = rng.normal(0.0, 5.0, size=(6, 6)).astype(np.float32)
        blot = np.asarray(
            Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
        )
        img += blot[..., None] + rng.normal(0.0, 1.5, size=(size, size, 1)).astype(np.float32)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}; kinds are {', '.join(BACKGROUND_KINDS)}")
    return img


def render(scene: Scene, size: int | None = None) -> Image.Image:
    """Draw a scene as an RGB PIL image of side ``size`` (default: ``scene.image_size``)."""
    size = check_image_size(size or scene.image_size)
    img = render_background(scene.background, size)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox(size)
        # Only rasterise the object's own window: cheap at 384 px with 4x supersampling.
        ix0, iy0 = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
        ix1, iy1 = min(int(math.ceil(x1)) + 1, size), min(int(math.ceil(y1)) + 1, size)
        alpha = coverage_mask(obj.shape, (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0), ix1 - ix0, iy1 - iy0)
        win = img[iy0:iy1, ix0:ix1]
        win += alpha[..., None] * (np.array(obj.rgb, dtype=np.float32) - win)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# Sampling


class LayoutError(RuntimeError):
    """No placement satisfies the constraints (too many or too large objects)."""


@dataclass(frozen=True)
class ObjectRequest:
    """What a sampler wants drawn: shape and colour; size class optional (random if None)."""

    shape: str
    color: str
    size_name: str | None = None


def sample_background(rng: np.random.Generator, kind: str | None = None) -> Background:
    """A random light background (kind random unless given)."""
    kind = kind or str(rng.choice(BACKGROUND_KINDS))
    i, j = rng.choice(len(BACKGROUND_COLORS), size=2, replace=False)
    return Background(
        kind=kind,
        rgb=BACKGROUND_COLORS[int(i)],
        rgb2=BACKGROUND_COLORS[int(j)],
        seed=int(rng.integers(0, 2**31 - 1)),
        direction=int(rng.integers(0, 3)),
    )


def with_background(scene: Scene, kind: str | None) -> Scene:
    """The same scene on a background of another kind (colours kept); ``None`` keeps it as is."""
    if kind is None or kind == scene.background.kind:
        return scene
    if kind not in BACKGROUND_KINDS:
        raise ValueError(f"unknown background kind {kind!r}; kinds are {', '.join(BACKGROUND_KINDS)}")
    return replace(scene, background=replace(scene.background, kind=kind))


def with_shapes(scene: Scene, shapes: Sequence[str]) -> Scene:
    """The same scene with each object's shape replaced (boxes, colours and background kept)."""
    if len(shapes) != len(scene.objects):
        raise ValueError(f"{len(shapes)} shapes for {len(scene.objects)} objects")
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        raise ValueError(f"unknown shape(s) {', '.join(unknown)}; shapes are {', '.join(SHAPES)}")
    return replace(scene, objects=tuple(replace(o, shape=s) for o, s in zip(scene.objects, shapes)))


def _jitter_rgb(rng: np.random.Generator, color: str) -> tuple[int, int, int]:
    base = np.array(COLORS[color])
    return tuple(int(v) for v in np.clip(base + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3), 0, 255))


def _boxes_clear(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    # (cx, cy, side): axis-aligned boxes separated by at least GAP along some axis.
    half = (a[2] + b[2]) / 2 + GAP
    return abs(a[0] - b[0]) >= half or abs(a[1] - b[1]) >= half


def sample_layout(
    rng: np.random.Generator,
    sizes: Sequence[float],
    relation: tuple[int, str, int] | None = None,
    max_tries: int = 400,
) -> list[tuple[float, float]]:
    """Centres for boxes of the given sides: inside the margins, GAP apart, never overlapping.

    ``relation=(i, rel, j)`` additionally requires object i to be clearly ``rel`` object j
    (see :func:`clear_relation`).
    """
    for _ in range(max_tries):
        centres: list[tuple[float, float]] = []
        ok = True
        for s in sizes:
            lo, hi = MARGIN + s / 2, 1 - MARGIN - s / 2
            if lo > hi:
                raise LayoutError(f"object size {s:.2f} does not fit with margin {MARGIN}")
            for _ in range(60):
                c = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
                if all(_boxes_clear((c[0], c[1], s), (p[0], p[1], ps)) for p, ps in zip(centres, sizes)):
                    centres.append(c)
                    break
            else:
                ok = False
                break
        if not ok:
            continue
        if relation is not None:
            i, rel, j = relation
            bi = _box(centres[i], sizes[i])
            bj = _box(centres[j], sizes[j])
            if clear_relation(bi, bj) != rel:
                continue
        return centres
    raise LayoutError(f"could not place {len(sizes)} objects of sizes {[round(s, 2) for s in sizes]}")


def _box(c: tuple[float, float], s: float) -> tuple[float, float, float, float]:
    return (c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2)


def make_scene(
    rng: np.random.Generator,
    requests: Sequence[ObjectRequest],
    image_size: int = 64,
    relation: tuple[int, str, int] | None = None,
    background: Background | None = None,
) -> Scene:
    """Place and colour the requested objects on a random background.

    Sizes are drawn per object (or taken from the request); if the layout cannot fit them the
    sizes are drawn again one class smaller, so any 1..4 requests always succeed.
    """
    if not 1 <= len(requests) <= MAX_OBJECTS:
        raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(requests)}")
    check_image_size(image_size)
    bg = background or sample_background(rng)
    names = list(SIZES)
    for shrink in range(len(names)):
        size_names = []
        for r in requests:
            if r.size_name is not None and shrink == 0:
                size_names.append(r.size_name)
            else:
                size_names.append(names[int(rng.integers(0, len(names) - shrink))])
        sizes = [SIZES[n] * float(rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)) for n in size_names]
        try:
            centres = sample_layout(rng, sizes, relation)
        except LayoutError:
            continue
        objs = tuple(
            SceneObject(r.shape, r.color, _jitter_rgb(rng, r.color), n, s, c)
            for r, n, s, c in zip(requests, size_names, sizes, centres)
        )
        return Scene(objects=objs, image_size=image_size, background=bg)
    raise LayoutError(f"could not lay out {len(requests)} objects even at the smallest size")


def random_requests(
    rng: np.random.Generator,
    n: int,
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = COLOR_NAMES,
) -> list[ObjectRequest]:
    """n objects with independent uniform shapes and colours."""
    return [ObjectRequest(str(rng.choice(shapes)), str(rng.choice(colors))) for _ in range(n)]


def sample_scene(rng: np.random.Generator, image_size: int = 64, n_objects: int | None = None) -> Scene:
    """A scene of ``n_objects`` (1..4, random if None) uniformly random objects."""
    n = n_objects or int(rng.integers(1, MAX_OBJECTS + 1))
    return make_scene(rng, random_requests(rng, n), image_size=image_size)


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """A generator fixed by a seed and a path of integers (stream id, sample index, ...).

    Every sample gets its own generator, so sample i is reproducible without drawing 0..i-1:
    datasets shard and resume freely.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(s) for s in stream)]))


def grid_image(images: Iterable[Image.Image], columns: int, pad: int = 2, fill: int = 255) -> Image.Image:
    """Tile images (all the same size) into a grid, for reports and quick looks."""
    ims = list(images)
    if not ims:
        raise ValueError("grid_image needs at least one image")
    w, h = ims[0].size
    rows = math.ceil(len(ims) / columns)
    out = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (fill, fill, fill))
    for k, im in enumerate(ims):
        r, c = divmod(k, columns)
        out.paste(im.convert("RGB").resize((w, h)), (pad + c * (w + pad), pad + r * (h + pad)))
    return out
