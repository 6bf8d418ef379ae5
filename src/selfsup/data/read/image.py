"""Decoding one image into uint8 (C, size, size): the one image path of the image cache, image-text pairs, video
frames (data/read/video.py) and streaming (data/stream/loader.py), so the same picture becomes the same pixels
everywhere.

    decode_image(data, size=32, channels=3)               # an encoded file's bytes or path  ->  uint8 (3, 32, 32)
    decode_array(pixels, peak, size=32, channels=3)       # (H, W, C) samples        ->  uint8 (3, 32, 32)

Pillow decodes (EXIF orientation applied, palette expanded, alpha composited on white, 16-bit scaled to 8), the
image becomes L or RGB, and its shorter side is resized to `size` (bicubic, which widens its kernel when
shrinking, so it is antialiased) and center-cropped. An array's values become 8 bits by `peak`, the value that
maps to 255 (array_peak: uint8 as is, uint16 divided by 257, floats taken as [0, 1] when their max is at most 1
and divided by the array's max otherwise, other ints (and bool) divided by the array's max); then clipped to
[0, 255] (NaN → 0). An image that cannot be used raises `Skip` with one of: "empty file", "corrupt image",
"truncated image", "image too large", "unsupported image mode".

Memory follows the pixels kept, not the file: the size is read from the header, a JPEG is decoded straight at
1/2, 1/4 or 1/8 scale (never below `size`), and an image that would still decode to more than MAX_PIXELS is
skipped as "image too large" before any pixel is decoded (a 400 KB PNG can declare 12000 × 12000: a gigabyte per
worker). A large image that passes is box-reduced by an integer factor right after decoding, to no less than
REDUCE_GAP × `size` on its shorter side, so the conversions and the resize that follow hold a small one (as
Pillow's reducing_gap: from about 3 × the target, the result cannot be told from a direct bicubic resize).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from selfsup.data.cache.decoding import Skip
from selfsup.data.cache.stats import PixelStats

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 8192 * 8192  # decoded (after a JPEG's draft): 67 MP, 268 MB as RGBA; a larger image is skipped
REDUCE_GAP = 4  # a decoded image is box-reduced to no less than this many times `size` on its shorter side
REDUCIBLE = ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr")  # modes whose pixels may be averaged
MAX_BYTES = 1 << 30  # a file or tar member above 1 GiB is no image worth reading (data/cache/rows.py, media.py)


class ArrayImage(NamedTuple):
    """An image already in memory (an .npz entry): (H, W, C) samples and the value that maps to 255."""
    pixels: np.ndarray
    peak: float


@dataclass(frozen=True)
class ImageRows:
    """A row of the image cache: uint8 (C, S, S) from a file's bytes or an ArrayImage (data/cache/rows.py)."""
    size: int
    channels: int

    dtype = np.dtype(np.uint8)
    max_bytes = MAX_BYTES

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)

    def stats(self) -> PixelStats:
        return PixelStats(self.channels)

    def __call__(self, data: bytes | Path | ArrayImage) -> tuple[np.ndarray, int, list[str]]:
        """(row, length 1, no notes)."""
        if isinstance(data, ArrayImage):
            return decode_array(data.pixels, data.peak, self.size, self.channels), 1, []
        return decode_image(data, self.size, self.channels), 1, []


def decode_image(data: bytes | Path, size: int, channels: int) -> np.ndarray:
    """An encoded image, its bytes or its file (read as far as needed), as uint8 (channels, size, size)."""
    return _square(_open_image(data, size), size, channels)


def decode_array(pixels: np.ndarray, peak: float, size: int, channels: int) -> np.ndarray:
    """(H, W, C) samples (C in 1/3/4), `peak` mapping to 255, as uint8 (channels, size, size)."""
    a = to_uint8(pixels, peak)  # (H, W, C)
    return _square(Image.fromarray(np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a)), size, channels)


def array_peak(a: np.ndarray) -> float:
    """The value that maps to 255 (see the module docstring)."""
    if a.dtype == np.uint8:
        return 255.0
    if a.dtype == np.uint16:
        return 65535.0
    top = float(np.nanmax(a)) if a.size else 0.0
    if a.dtype.kind == "f" and top <= 1:
        return 1.0
    return top if top > 0 else 1.0


def to_uint8(a: np.ndarray, peak: float) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return np.clip(np.nan_to_num(a.astype(np.float32) * (255 / peak)).round(), 0, 255).astype(np.uint8)


def _square(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """The center square of any Pillow image, resized to size × size, as uint8 (channels, size, size)."""
    try:
        img = _to_mode(img, channels)
    except Exception:  # a mode Pillow cannot convert is a property of the file, not a bug here
        raise Skip("unsupported image mode") from None
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)  # the center square, in source pixels
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)  # = shorter side to size, then center crop
    a = np.asarray(img)  # (S, S) or (S, S, 3)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _open_image(data: bytes | Path, size: int) -> Image.Image:
    if not data:
        raise Skip("empty file")
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 MP on the header's size; MAX_PIXELS decides here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)  # reads the header only
        w, h = img.size
        if min(w, h) > size:  # JPEG: decode at 1/2, 1/4 or 1/8 scale straight away, never below `size`
            img.draft(None, (-(-w * size // min(w, h)), -(-h * size // min(w, h))))
        if img.size[0] * img.size[1] > MAX_PIXELS:
            img.close()
            raise Skip("image too large")
        img.load()  # Pillow decodes lazily: truncated data shows only here
        ImageOps.exif_transpose(img, in_place=True)
        return _reduced(img, size)
    except Skip:
        raise
    except Image.DecompressionBombError:
        raise Skip("image too large") from None
    except Exception as e:  # Pillow's plugins raise many kinds of exception on malformed data
        raise Skip("truncated image" if "truncated" in str(e) else "corrupt image") from None


def _reduced(img: Image.Image, size: int) -> Image.Image:
    """`img` box-reduced by the largest integer factor that keeps its shorter side at least REDUCE_GAP × size; a
    palette, 1-bit or 16-bit image is first widened as _to_mode would widen it, since its values cannot be averaged."""
    factor = min(img.size) // (REDUCE_GAP * size)
    if factor < 2:
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    return img.reduce(factor) if img.mode in REDUCIBLE else img


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode as L (channels 1) or RGB (channels 3)."""
    if img.mode.startswith("I") or img.mode == "F":  # 16-bit (or 32-bit int, or float) samples
        a = np.asarray(img)
        img = Image.fromarray(to_uint8(a, 65535.0 if img.mode.startswith("I") else array_peak(a)))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    if img.mode not in ("L", "RGB"):  # 1-bit, CMYK, YCbCr, the composited RGBA, ...
        img = img.convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)
