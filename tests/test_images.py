"""Image inputs at their limits: every accepted image is processed in bounded memory (checked
under an address-space cap), oversized ones are refused from the header with one clear line,
and `open_image` takes every input kind the Python API accepts."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from memlimit import run_limited
from PIL import Image

from openjanus.errors import UserError
from openjanus.images import MAX_IMAGE_PIXELS, ImageLoadError, load_image, open_image, preprocess_gen_image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit grey pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND",
                                                                                                             b"")


def test_thin_image_is_processed_in_bounded_memory(tmp_path: Path) -> None:
    # 1,000,000 x 1 (3 KB as PNG): resizing the short side first would need ~16 GB (gen path).
    Image.new("RGB", (1_000_000, 1), (200, 30, 10)).save(tmp_path / "thin.png")
    Image.new("RGB", (1, 200_000), (200, 30, 10)).save(tmp_path / "tall.png")
    proc = run_limited(f"""
        from openjanus.images import ImageProcessorConfig, load_image, preprocess_gen_image, preprocess_und_images
        for name in ("thin.png", "tall.png"):
            img = load_image({str(tmp_path)!r} + "/" + name)
            gen = preprocess_gen_image(img, 384)
            und = preprocess_und_images([img], ImageProcessorConfig(384))
            assert gen.shape == (3, 384, 384) and und.shape == (1, 3, 384, 384)
            # A uniform colour stays that colour through the crop: (200 / 127.5 - 1).
            assert abs(float(gen[0].mean()) - (200 / 127.5 - 1)) < 1e-6, float(gen[0].mean())
        print("ok")
    """, budget_mb=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_16_bit_grey_converts_without_float64_copies(tmp_path: Path) -> None:
    # 4096 x 4096 16-bit grey (32 MB of samples): the float64 conversion took ~470 MB.
    values = (np.arange(4096 * 4096, dtype=np.uint32) * 7 % 65536).astype(np.uint16).reshape(4096, 4096)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    expected = np.rint(values[:3, :5] / 257.0).astype(np.uint8)
    proc = run_limited(f"""
        import numpy as np
        from openjanus.images import load_image
        img = load_image({str(tmp_path / "grey16.png")!r})
        print(np.asarray(img)[:3, :5, 0].tolist())
    """, budget_mb=220)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(expected.tolist())


def test_oversized_image_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(10_000, 10_000))  # 100 megapixels, a 60-byte file
    with pytest.raises(ImageLoadError, match="10000 x 10000 = 100,000,000 pixels, above the limit") as e:
        load_image(path)
    assert "\n" not in str(e.value) and isinstance(e.value, UserError)
    with pytest.raises(ImageLoadError, match="above the limit"):
        open_image(path.read_bytes())
    with pytest.raises(ImageLoadError, match="exceeds limit") as e:  # PIL's own bomb check, further up
        load_image(png_header_only(100_000, 100_000))
    assert "\n" not in str(e.value)
    side = int(MAX_IMAGE_PIXELS**0.5)
    with pytest.raises(ImageLoadError, match="above the limit"):
        load_image(png_header_only(side + 1, side))


def test_open_image_accepts_every_input_kind(tmp_path: Path) -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    path = tmp_path / "a.png"
    img.save(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    for source in (str(path), path, buf.getvalue(), bytearray(buf.getvalue()), img, img.convert("RGBA")):
        out = open_image(source)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(img)), type(source)
    (tmp_path / "empty.png").write_bytes(b"")
    cases = [(b"", "empty"), (str(tmp_path / "empty.png"), "empty"), ("", "non-empty path"),
             (12, "from a int"), ([path], "from a list"), (tmp_path / "missing.png", "missing.png")]
    for bad, message in cases:
        with pytest.raises(ImageLoadError, match=message) as e:
            open_image(bad)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)


def test_gen_crop_of_extreme_aspect_is_the_centre() -> None:
    # Left third red, middle third green, right third blue, 30000 x 2: the crop keeps the middle.
    a = np.zeros((2, 30000, 3), np.uint8)
    a[:, :10000, 0] = a[:, 10000:20000, 1] = a[:, 20000:, 2] = 255
    x = preprocess_gen_image(Image.fromarray(a), 16)
    assert x.shape == (3, 16, 16)
    assert bool((x[1] == 1).all()) and bool((x[0] == -1).all()) and bool((x[2] == -1).all())
