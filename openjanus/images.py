"""Image inputs: reading any image file into RGB, and the two preprocessing paths.

The understanding path (`preprocess_und_images`) reproduces the official VLMImageProcessor
(SPEC section 4) bit for bit: truncating resize that keeps the aspect ratio, PIL bicubic, pad
to a square with the mean colour, float64 rescale, float32 normalise. The generation path
(`preprocess_gen_image`) feeds the VQ encoder: resize the short side, centre-crop, [-1, 1].
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import ConfigError
from .errors import UserError

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "MAX_IMAGE_PIXELS", "GEN_RESIZE_MAX_PIXELS", "ImageInput", "ImageLoadError",
    "ImageProcessorConfig", "has_alpha", "load_image", "open_image", "check_image_size", "ensure_rgb",
    "preprocess_und_images", "preprocess_gen_image",
]

# What the official image processor falls back to when preprocessor_config.json omits a key.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Files that folders of images are searched for: whatever `load_image` (PIL) reads, GIF included
# (its first frame), as image folders are often scraped collections.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


# The largest image accepted, in pixels (8192 x 8192), checked from the file header before
# decoding. Loading an accepted image as RGB then took at most 14 bytes per pixel when measured
# (8 for 8-bit RGB/RGBA/CMYK: PIL keeps RGB in 4 bytes and the loader copies it; 13.6 for
# 32-bit grey), under 1 GB at the limit, and both preprocessing paths below need a bounded
# amount more, whatever the aspect ratio.
MAX_IMAGE_PIXELS = 8192 * 8192

# The generation path resizes the short side first. Above this many pixels in that resized
# image (an extreme aspect ratio: 1,000,000 x 1 would need 1.5e11) it resamples only the
# centre square that the crop keeps.
GEN_RESIZE_MAX_PIXELS = 1 << 24

# Rows converted at a time from 16/32-bit grey, so the float temporaries stay small.
_CONVERT_CHUNK_PIXELS = 1 << 20


class ImageLoadError(UserError, ValueError):
    """An image file or byte string could not be read or decoded, or is too large."""


ImageInput = Image.Image | str | os.PathLike | bytes | bytearray


def check_image_size(width: int, height: int, name: str = "image") -> None:
    """Refuse an empty image or one above `MAX_IMAGE_PIXELS` (raises ImageLoadError)."""
    if width < 1 or height < 1:
        raise ImageLoadError(f"{name} is empty ({width} x {height} pixels)")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageLoadError(f"{name} is {width} x {height} = {width * height:,} pixels, above the limit of "
                             f"{MAX_IMAGE_PIXELS:,} (openjanus.images.MAX_IMAGE_PIXELS); downscale it first")


def _wide_gray_to_rgb(img: Image.Image) -> Image.Image:
    # PIL's own conversion clips 16/32-bit grey at 255 (a 16-bit photo turns white); scale instead.
    a = np.asarray(img)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    out = np.empty(a.shape, dtype=np.uint8)
    rows = max(1, _CONVERT_CHUNK_PIXELS // max(1, a.shape[1] if a.ndim > 1 else 1))
    for r in range(0, a.shape[0], rows):
        part = a[r : r + rows]
        if img.mode.startswith("I;16") or (lo >= 0 and 255 < hi <= 65535):
            # round(v / 257) in integers: v / 257 is never exactly k + 1/2 (257 is odd), so this
            # equals np.rint(v / 257.0) and 65535 -> 255 exactly, without float64 copies.
            out[r : r + rows] = (part.astype(np.int64) + 128) // 257
        elif lo < 0 or hi > 255:
            # 32-bit data outside any standard range: stretch min..max over 0..255.
            f = part.astype(np.float64)
            out[r : r + rows] = np.rint((f - lo) / (hi - lo) * 255.0) if hi > lo else np.clip(f, 0, 255)
        else:
            out[r : r + rows] = part
    return Image.fromarray(out).convert("RGB")


def ensure_rgb(img: Image.Image) -> Image.Image:
    """Return `img` as mode RGB (the same object when it already is).

    Matches the official `load_pil_images`, which is `.convert("RGB")`: alpha is dropped, not
    composited, and palette transparency ignored. 16-bit and 32-bit integer grey is scaled to
    8 bits (16-bit: round(v / 257)) instead of clipped.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        return _wide_gray_to_rgb(img)
    if img.mode == "La":  # premultiplied grey+alpha has no direct path to RGB in PIL
        img = img.convert("LA")
    return img.convert("RGB")


def has_alpha(img: Image.Image) -> bool:
    """Whether an image carries transparency (an alpha channel, or a palette's transparent index)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def load_image(source: str | os.PathLike[str] | bytes | bytearray, keep_alpha: bool = False) -> Image.Image:
    """Read an image file (path or encoded bytes) into an RGB PIL image (RGBA when `keep_alpha`
    and the image has transparency: edit masks); raises ImageLoadError.

    EXIF orientation is not applied, like the official loader.
    """
    if isinstance(source, (bytes, bytearray)):
        name, fp = f"<{len(source)} bytes>", io.BytesIO(bytes(source))
    else:
        name, fp = os.fspath(source), os.fspath(source)
    try:
        with warnings.catch_warnings():
            # PIL warns from ~89M pixels; `check_image_size` refuses those with its own message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
        with img:
            check_image_size(*img.size, name=f"image {name}")  # from the header, before decoding
            img.load()  # decode now: open() is lazy and truncated data only fails here
            rgb = img.convert("RGBA") if keep_alpha and has_alpha(img) else ensure_rgb(img)
            # Closing the file also frees an image that was not converted, so keep a copy.
            return rgb.copy() if rgb is img else rgb
    except ImageLoadError:
        raise
    except Exception as e:  # PIL raises a zoo of types on corrupt input (OSError, SyntaxError, ...)
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ImageLoadError(f"cannot read image {name}: {reason}") from e


def open_image(source: str | os.PathLike[str] | bytes | bytearray | Image.Image,
               keep_alpha: bool = False) -> Image.Image:
    """Any image input as an RGB PIL image: a path (str or PathLike), encoded bytes, or a PIL
    image (converted with `ensure_rgb`); with `keep_alpha`, an image with transparency comes
    back as RGBA. Empty input, unsupported types and images above `MAX_IMAGE_PIXELS` raise
    ImageLoadError with a one-line message."""
    if isinstance(source, Image.Image):
        check_image_size(*source.size)
        return source.convert("RGBA") if keep_alpha and has_alpha(source) else ensure_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageLoadError("cannot read image <0 bytes>: the data is empty")
        return load_image(source, keep_alpha)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes) or not path:
            raise ImageLoadError(f"cannot read image {path!r}: give a non-empty path string")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise ImageLoadError(f"cannot read image {path}: the file is empty")
        return load_image(path, keep_alpha)
    raise ImageLoadError(f"cannot read an image from a {type(source).__name__}; give a path, encoded bytes "
                         "or a PIL image")


@dataclass(frozen=True)
class ImageProcessorConfig:
    """Understanding-path preprocessing parameters (the official VLMImageProcessor's).

    The dataclass defaults are Janus-Pro's (mean = std = 0.5, normalised); a checkpoint's
    preprocessor_config.json always wins, see `from_dir`.
    """

    image_size: int = 384
    min_size: int = 14
    image_mean: tuple[float, float, float] | None = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] | None = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    do_normalize: bool = True

    def __post_init__(self) -> None:
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != 3:
                    raise ConfigError(f"{name} must have 3 values, got {value}")
                object.__setattr__(self, name, value)
        if self.image_size < self.min_size:
            raise ConfigError(f"image_size {self.image_size} is below min_size {self.min_size}")
        if self.do_normalize and (self.image_mean is None or self.image_std is None):
            raise ConfigError("do_normalize is true but image_mean or image_std is missing")

    @property
    def background_color(self) -> tuple[int, int, int]:
        """Pad colour for non-square images: the mean in 0..255, truncated (0.5 -> 127)."""
        if self.image_mean is None:
            return (127, 127, 127)
        r, g, b = (int(x * 255) for x in self.image_mean)
        return (r, g, b)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], image_size: int) -> ImageProcessorConfig:
        """Read preprocessor_config.json in `path`.

        No file: mean = std = (0.5, 0.5, 0.5) with normalisation (Janus-Pro's values). A file
        with missing keys: the official code's own defaults (CLIP mean/std, min_size 14,
        rescale 1/255, normalise). `image_size` is the vision tower's; a file that disagrees
        is an error.
        """
        file = Path(path) / "preprocessor_config.json"
        if not file.is_file():
            return cls(image_size=image_size)
        try:
            d = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot parse {file}: {e}") from None
        size = int(d.get("image_size", image_size))
        if size != image_size:
            raise ConfigError(f"{file} has image_size {size} but the vision encoder takes {image_size}")
        return cls(
            image_size=size,
            min_size=int(d.get("min_size", 14)),
            image_mean=d.get("image_mean", CLIP_MEAN),
            image_std=d.get("image_std", CLIP_STD),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            do_normalize=bool(d.get("do_normalize", True)),
        )


def _expand_to_square(img: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    canvas = Image.new(img.mode, (max(w, h),) * 2, color)
    canvas.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return canvas


def _und_pixels(img: Image.Image, cfg: ImageProcessorConfig) -> np.ndarray:
    w, h = img.size
    m = max(w, h)
    # The float expression and int() truncation are the official ones; up-scales small images too.
    th = max(int(h / m * cfg.image_size), cfg.min_size)
    tw = max(int(w / m * cfg.image_size), cfg.min_size)
    # PIL bicubic on a PIL image is bit-identical to torchvision's antialiased resize there.
    img = _expand_to_square(img.resize((tw, th), Image.Resampling.BICUBIC), cfg.background_color)
    x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)  # [H,W,3] -> [3,H,W]
    # float64 multiply then float32, as transformers' rescale does; normalise in float32.
    x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    if cfg.do_normalize:
        assert cfg.image_mean is not None and cfg.image_std is not None
        mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(cfg.image_std, dtype=np.float32)[:, None, None]
        x = (x - mean) / std
    return x


def preprocess_und_images(images: Sequence[Image.Image], cfg: ImageProcessorConfig) -> torch.Tensor:
    """Understanding-encoder input: float32 [n, 3, S, S] (n may be 0), S = cfg.image_size."""
    if not images:
        return torch.zeros(0, 3, cfg.image_size, cfg.image_size)
    return torch.from_numpy(np.stack([_und_pixels(ensure_rgb(img), cfg) for img in images]))


def preprocess_gen_image(img: Image.Image, size: int) -> torch.Tensor:
    """VQ-encoder input: short side resized to `size` (PIL bicubic), long side centre-cropped,
    scaled to [-1, 1]; float32 [3, size, size]."""
    img = ensure_rgb(img)
    w, h = img.size
    if w <= h:
        tw, th = size, max(size, round(h * size / w))
    else:
        tw, th = max(size, round(w * size / h)), size
    left, top = (tw - size) // 2, (th - size) // 2
    if tw * th <= GEN_RESIZE_MAX_PIXELS:
        img = img.resize((tw, th), Image.Resampling.BICUBIC)
        img = img.crop((left, top, left + size, top + size))
    else:
        # An extreme aspect ratio: resample only the source region the crop keeps, with the
        # same scale factors, instead of building the whole resized strip.
        sx, sy = w / tw, h / th
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # [H,W,3] -> [3,H,W]
    return x.float() / 127.5 - 1.0
