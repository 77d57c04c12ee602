"""Inspecting stored image bytes without trusting them.

The header is read first and the size checked *before* any pixel is decoded, so a 20000×20000
"decompression bomb" costs nothing; then ``verify()`` checks the file's integrity, and a full
decode plus ``convert("RGB")`` proves that a training loader will get pixels (``verify`` alone
misses truncated JPEGs).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class ImageInfo:
    width: int | None
    height: int | None
    mode: str | None
    error: str | None  # None: decodes to RGB within bounds


def inspect_image(data: bytes | None, max_side: int, min_side: int = 1) -> ImageInfo:
    if not data:
        return ImageInfo(None, None, None, "empty bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                width, height, mode = header.width, header.height, header.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return ImageInfo(None, None, None, "decompression bomb (pixel count over PIL's limit)")
    except Exception as exc:  # noqa: BLE001 - any failure to parse the header is the reason
        return ImageInfo(None, None, None, f"undecodable: {exc}")
    if not (min_side <= width <= max_side and min_side <= height <= max_side):
        # Size outside the bounds: reported through the width/height expectations, never decoded.
        return ImageInfo(width, height, mode, None)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        return ImageInfo(width, height, mode, f"corrupt: {exc}")
    return ImageInfo(width, height, mode, None)
