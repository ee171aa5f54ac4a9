"""The web page's icon, drawn on first request: the demo model's own subject (a red circle left
of a blue square), as a 16 and 32 pixel ICO. Drawn rather than stored, so the repository holds
no binary besides the demo model's weights."""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image, ImageDraw

__all__ = ["favicon_ico"]


@lru_cache(maxsize=1)
def favicon_ico() -> bytes:
    size = 64  # drawn large, scaled down by the ICO writer for each size
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    draw.rounded_rectangle([0, 0, size - 1, size - 1], radius=12, fill=(250, 250, 250, 255))
    draw.ellipse([6, 18, 32, 44], fill=(214, 39, 40, 255))
    draw.rectangle([36, 20, 58, 42], fill=(31, 119, 180, 255))
    buf = io.BytesIO()
    im.save(buf, format="ICO", sizes=[(16, 16), (32, 32)])
    return buf.getvalue()
