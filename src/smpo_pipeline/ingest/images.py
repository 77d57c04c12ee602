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


def pair_image_bytes(pairs, images_dir) -> dict[str, bytes]:
    """The stored bytes of both images of every pair (columns ``image_{0,1}_uid`` and
    ``image_{0,1}_file``, as the ``data`` pipeline writes them), reading each images file once."""
    wanted: dict[str, set[str]] = {}
    for k in (0, 1):
        for image_file, uid in zip(pairs[f"image_{k}_file"], pairs[f"image_{k}_uid"], strict=True):
            wanted.setdefault(image_file, set()).add(uid)
    return images_by_uid(wanted, images_dir)


def images_by_uid(wanted: dict[str, set[str]], images_dir) -> dict[str, bytes]:
    """The bytes of the images ``wanted`` names ({images file: uids}) under ``images_dir``; a uid
    not in its file is an error that names the file."""
    from pathlib import Path

    import pyarrow.parquet as pq

    found: dict[str, bytes] = {}
    for image_file, uids in wanted.items():
        table = pq.read_table(Path(images_dir) / image_file, columns=["image_uid", "jpg"])
        found.update((u, b) for u, b in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True)
                     if u in uids)
        missing = set(uids) - set(found)
        if missing:
            raise KeyError(f"{len(missing)} images are not in {Path(images_dir) / image_file} "
                           f"(e.g. {sorted(missing)[0]}): re-run the data pipeline")
    return found


def decode_rgb(data: bytes) -> Image.Image:
    """Stored image bytes (already validated by ``inspect_image``) as an RGB PIL image."""
    return Image.open(io.BytesIO(data)).convert("RGB")
